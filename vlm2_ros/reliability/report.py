"""`vlm2 bench reliability-report`: the whole reliability suite at a chosen size, as one Markdown
report (reliability.md), one flat JSON object (reliability.json) and PNG plots, in one folder.

Sizes: "ci" (a few minutes on 2 cores: what CI runs as tests) and "full" (the issue's run: a
10-minute soak, 50 kills, 5 minutes of fuzzing); each figure can also be set on its own.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path

import psutil

from ..atomic_io import write_bytes_atomic, write_json_atomic
from .node_process import private_domain_id

SIZES = {
    "ci": {"soak_minutes": 0.4, "kills": 6, "writer_kills": 6, "fuzz_seconds": 20.0},
    "full": {"soak_minutes": 10.0, "kills": 50, "writer_kills": 50, "fuzz_seconds": 300.0},
}


def _flat(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in values.items() if isinstance(v, (int, float, str, bool))}


def plot_crash_loop(events: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kills = [e for e in events if e["kill"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    colours = {"running": "tab:blue", "snapshot_write": "tab:red", "startup": "tab:green"}
    for moment, colour in colours.items():
        points = [(e["kill"], e["frames_on_disk"] or 0) for e in kills if e["moment"] == moment]
        if points:
            axes[0].scatter(*zip(*points), color=colour, label=f"killed {moment.replace('_', ' ')}")
    lost = [(e["kill"], 0) for e in kills if not e["valid_after_kill"]]
    if lost:
        axes[0].scatter(*zip(*lost), marker="x", color="black", label="no valid snapshot")
    axes[0].set(xlabel="kill", ylabel="frames in the snapshot on disk", title="snapshot after each SIGKILL")
    axes[0].legend(fontsize=8)
    restarts = [(i, e["restart_s"]) for i, e in enumerate(events) if "restart_s" in e]
    if restarts:
        axes[1].plot(*zip(*restarts), "o-")
    axes[1].set(xlabel="start", ylabel="s to active (snapshot loaded)", title="restart time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(rows: list[tuple]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body])


def _cases_table(results) -> str:
    return _table([("case", "expected", "result")] + [
        (r.name, r.expected, "ok" if r.ok else f"**FAILED**: {r.detail}") for r in results])


def run_reliability_report(out: Path, size: str = "ci", soak_minutes: float | None = None, kills: int | None = None,
                           writer_kills: int | None = None, fuzz_seconds: float | None = None,
                           domain_id: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    from .bad_inputs import REQUEST_CASES, TOPIC_CASES, BadInputHarness, run_file_cases
    from .crash_loop import run_crash_loop, run_writer_kills
    from .fuzz import run_fuzz
    from .security import scan_tree
    from .soak import SoakConfig, plot_soak, run_soak
    from .storage import read_only_directory_case, run_engine_storage_faults, run_node_storage_fault

    sizes = {**SIZES[size], **{k: v for k, v in dict(soak_minutes=soak_minutes, kills=kills, writer_kills=writer_kills,
                                                     fuzz_seconds=fuzz_seconds).items() if v is not None}}
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    domain = private_domain_id() if domain_id is None else domain_id
    started = time.monotonic()

    soak = run_soak(SoakConfig(minutes=sizes["soak_minutes"], seed=seed), work / "soak", domain, progress)
    plot_soak(soak["curves"], soak["result"], str(out / "soak.png"))
    crash = run_crash_loop(sizes["kills"], work / "crash", domain, seed=seed, progress=progress)
    plot_crash_loop(crash["events"], str(out / "crash_loop.png"))
    writer = run_writer_kills(sizes["writer_kills"], work / "writer", seed=seed, progress=progress)
    storage = run_engine_storage_faults(work / "storage")
    read_only = read_only_directory_case(work / "storage")
    node_storage = run_node_storage_fault(work / "storage-node", domain)
    with BadInputHarness(work / "bad-input", domain) as harness:
        message_results = [harness.try_case(case) for case in TOPIC_CASES + REQUEST_CASES]
    file_results = run_file_cases(work / "bad-files")
    fuzz = run_fuzz(sizes["fuzz_seconds"], work / "fuzz", seed=seed)
    package = Path(__file__).resolve().parents[1]
    scanned, findings = scan_tree(package)

    s, c = soak["result"], crash["result"]
    rss_bound = max(50.0, 0.1 * s["rss_after_warmup_mb"])
    load_held = (s["node_crashes"] == 0 and s["queries_no_response"] == 0 and s["queries_internal_error"] == 0
                 and s["frames_unaccounted"] == 0 and s["queue_drain_s"] >= 0
                 and s["queries_sent"] == s["queries_answered_or_clean_error"]
                 and s["rss_growth_mb"] <= rss_bound)
    node_storage_ok = (node_storage["alive"] and node_storage["exit_code"] == 0 and not node_storage["save_memory_success"]
                       and node_storage["periodic_failures_counted"] >= 1 and node_storage["query_error_code"] == 0
                       and node_storage["log_names_the_failure"])
    storage_results = storage + ([read_only] if read_only else [])
    data_lost = c["snapshots_lost"] + c["half_loaded"] + c["older_than_acknowledged"] + writer["writer_snapshots_lost"]
    faults_total = c["kills"] + writer["writer_kills"] + len(storage_results) + 1
    # each failure after a node kill (memory lost or wrong, no ingestion after the restart) is charged to one kill
    crash_failures = (c["snapshots_lost"] + c["half_loaded"] + c["older_than_acknowledged"]
                      + c["restarts"] - c["restarts_continued"])
    faults_survived = (max(0, c["kills"] - crash_failures) + writer["writer_kills"] - writer["writer_snapshots_lost"]
                       + sum(r.ok for r in storage_results) + node_storage_ok)
    bad_inputs = message_results + file_results
    summary = {
        "size": size, "seconds": time.monotonic() - started,
        "load_held": load_held, "faults_tried": faults_total, "faults_survived": faults_survived,
        "bad_inputs_tried": len(bad_inputs), "bad_inputs_handled": sum(r.ok for r in bad_inputs),
        "fuzz_inputs": fuzz["executions"], "fuzz_failures": fuzz["failures"],
        "data_lost": data_lost, "unsafe_loading_findings": len(findings),
    }
    result = {**summary, **_flat("soak", s), **_flat("crash", c), **writer,
              **{f"storage_node_{k}": v for k, v in node_storage.items()},
              **_flat("fuzz", fuzz), "security_files_scanned": scanned,
              "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
                         f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "seed": seed}
    write_json_atomic(out / "reliability.json", result)
    write_json_atomic(out / "bad_inputs.json", [asdict(r) for r in bad_inputs + storage_results])
    write_json_atomic(out / "crash_loop_events.json", crash["events"])

    verdict = lambda ok: "yes" if ok else "**NO**"  # noqa: E731
    report = f"""# vlm2_node reliability report

Size `{size}` ({', '.join(f'{k} {v:g}' for k, v in sizes.items())}), seed {seed}, on {result['machine']};
{summary['seconds'] / 60:.1f} minutes. Produced by `vlm2 bench reliability-report --size {size} --out {out}`.

| figure | value |
| --- | --- |
| load held ({s['cameras']} x {s['rate_hz']:g} Hz {s['width']}x{s['height']}, {s['clients']} clients, {s['minutes']:g} min) | {verdict(load_held)} |
| faults survived (SIGKILLs, writer kills, storage faults) | {faults_survived} / {faults_total} |
| bad inputs tried / handled (messages, requests, files) | {len(bad_inputs)} / {summary['bad_inputs_handled']} |
| fuzz inputs / failures ({fuzz['engine']}) | {fuzz['executions']:,} / {fuzz['failures']} |
| data lost (snapshots lost, half-loaded or older than acknowledged) | {data_lost} |
| unsafe loading (pickle, torch.load, trust_remote_code, eval, ...) in {scanned} files | {len(findings)} |

## 1. Flood and soak

{s['cameras']} cameras at {s['rate_hz']:g} Hz ({s['width']}x{s['height']} rgb8, reliable QoS) published from their own
process for {s['duration_s']:.0f} s while {s['clients']} clients queried continuously (timeout {s['query_timeout_s']:g} s).
Node: no ingest rate cap, ingest queue of {s['queue_size']}.

{_table([("figure", "value"),
         ("node crashes", s['node_crashes']), ("node exit code at the end", s['node_exit_code']),
         ("frames published / delivered to the node", f"{s['frames_published']} / {s['frames_received']} "
          f"({s['publish_rate_hz']:.1f} Hz published)"),
         ("frames ingested", f"{s['frames_ingested']} ({s['ingest_rate_hz']:.1f} Hz)"),
         ("frames dropped and counted (queue full / rate cap / bad / rejected)",
          f"{s['frames_dropped']} ({s['frames_dropped_queue_full']} / {s['frames_dropped_rate_limit']} / "
          f"{s['frames_dropped_bad_image']} / {s['frames_dropped_rejected']})"),
         ("frames received but not accounted for", s['frames_unaccounted']),
         ("longest time frames arrived but none was ingested (s)", f"{s['ingest_longest_stall_s']:.1f}"),
         ("ingest queue drained after the cameras stopped, in (s)",
          f"{s['queue_drain_s']:.1f}" if s['queue_drain_s'] >= 0 else "**not within 60 s**"),
         ("queries sent / answered or clean error code", f"{s['queries_sent']} / {s['queries_answered_or_clean_error']}"),
         ("query outcomes", s['query_outcomes']),
         ("queries with no response / INTERNAL_ERROR", f"{s['queries_no_response']} / {s['queries_internal_error']}"),
         ("answered query latency p50 / p90 / p99 / max (ms)",
          f"{s['query_latency_ms_p50']:.0f} / {s['query_latency_ms_p90']:.0f} / {s['query_latency_ms_p99']:.0f} / "
          f"{s['query_latency_ms_max']:.0f}"),
         ("any response latency p50 / p99 (ms)", f"{s['response_latency_ms_p50_all']:.0f} / "
                                                 f"{s['response_latency_ms_p99_all']:.0f}"),
         ("node RSS start / after warm-up / end / max (MiB)",
          f"{s['rss_start_mb']:.0f} / {s['rss_after_warmup_mb']:.0f} / {s['rss_end_mb']:.0f} / {s['rss_max_mb']:.0f}"),
         ("RSS growth after warm-up (MiB; bound {:.0f})".format(rss_bound),
          f"{s['rss_growth_mb']:+.1f} (trend {s['rss_slope_mb_per_min']:+.2f} MiB/min)"),
         ("node CPU, mean of 1 s samples", f"{s['node_cpu_percent_mean']:.0f} %")])}

RSS curve (MiB, every {max(1, len(soak['curves']['rss']) // 10)} s):
{', '.join(f"{t:.0f} s: {mb:.0f}" for t, mb in soak['curves']['rss'][::max(1, len(soak['curves']['rss']) // 10)])}

![soak](soak.png)

## 2. Crash safety of the memory

**Node**: SIGKILL {c['kills']} times (seed {seed}; snapshot every {c['snapshot_period_s']:g} s while a camera streams):
{c['kills_while_running']} at a random moment while running, {c['kills_at_snapshot_write']} the instant a snapshot write
was seen in progress, {c['kills_during_startup']} during start-up (while loading). {c['kills_that_cut_a_write_short']}
kills cut a snapshot write short.

{_table([("figure", "value"),
         ("restarts checked", c['restarts']),
         ("restarts that loaded exactly the snapshot on disk", c['restarts_with_valid_memory']),
         ("restarts with no snapshot yet (none ever completed)", c['restarts_before_first_snapshot']),
         ("restarts that went on ingesting", c['restarts_continued']),
         ("snapshots lost (a completed one could not be loaded)", c['snapshots_lost']),
         ("half-loaded (memory differs from the file)", c['half_loaded']),
         ("snapshot older than the newest the node reported written", c['older_than_acknowledged']),
         ("restart time median / max (s)", f"{c['restart_s_median']:.1f} / {c['restart_s_max']:.1f}"),
         ("temporary files left after the final clean stop", c['stale_temp_files_at_end']),
         ("final stop: exit code, snapshot valid", f"{c['final_exit_code']}, {c['final_snapshot_valid']}")])}

![crash loop](crash_loop.png)

**Engine**: a process writing 8 MB snapshots in a loop was SIGKILLed {writer['writer_kills']} times
({writer['writer_kills_mid_write']} the instant a write was in progress; {writer['writer_kills_that_cut_a_write_short']}
cut a write short): snapshots lost {writer['writer_snapshots_lost']}; temporary files a later write failed to remove
{writer['writer_temp_files_not_cleaned']}.

**Storage faults** (engine level; each must fail with a clear OSError, keep the previous snapshot and the memory, and
leave nothing behind once the disk works again):

{_cases_table(storage_results)}
{"" if read_only else "(The read-only directory case (chmod 555) was not run: this ran as root, for whom permissions are not enforced; the read-only file system case covers the failure path.)"}

**Node with an unwritable snapshot directory** (its parent is a regular file): node kept running {node_storage['alive']},
snapshot failures counted in /diagnostics {node_storage['periodic_failures_counted']} (level {node_storage['diagnostics_level']}:
"{node_storage['diagnostics_message']}"), ~/save_memory answered success={node_storage['save_memory_success']}
("{node_storage['save_memory_message']}"), a query during the fault answered with code {node_storage['query_error_code']},
exit code {node_storage['exit_code']}.

## 3. Bad input matrix

Messages and requests were sent to one running node (reliable QoS, time-jump policy `keep`); after each: rejection
counted, node alive, memory (sizes, replacements, newest stamp, frames ingested) unchanged. Files were damaged copies
of a good snapshot and checkpoint, loaded by the engine and the checkpoint loader. A question that is not valid
UTF-8 cannot be sent by rclpy (UnicodeEncodeError in the client); strings that are not valid UTF-8 on the wire are
decoded by rclpy with U+FFFD replacements (the "encoding not UTF-8" case).

{_cases_table(bad_inputs)}

## 4. Fuzzing

{fuzz['engine']}, {fuzz['seconds']:g} s of the message-to-tensor path (bytes -> Image / CompressedImage fields ->
image_to_rgb / compressed_to_rgb -> stamp_to_ns -> engine.preprocess): {fuzz['executions']:,} inputs, {fuzz['accepted']:,}
accepted (size, dtype and range checked), {fuzz['rejected']:,} rejected with a ConversionError / IngestError,
**{fuzz['failures']} failures**{f" ({fuzz['failure_examples']})" if fuzz['failures'] else ""}; coverage
{fuzz['coverage_edges'] if fuzz['coverage_edges'] >= 0 else 'not measured'} edges, corpus {fuzz['corpus_size']}.

## 5. Unsafe loading

{scanned} Python files of the package scanned for unpickling modules, torch.load without weights_only=True,
numpy.load without allow_pickle=False, unsafe YAML loading, trust_remote_code and eval/exec:
{"none found." if not findings else "; ".join(str(f) for f in findings)}
"""
    write_bytes_atomic(out / "reliability.md", report.encode())
    return result

