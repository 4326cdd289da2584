"""Runtimes for the per-frame hot path: torch (any dtype) or ONNX Runtime (CPU, CUDA, TensorRT).

The hot path is three graphs, each a method of VLM2Model (vlm2_ros.model.vlm2):
    frame_encoders   images [T,3,H,W] -> geometry frame tokens [T,P,D], semantic grid [T,hs,ws,C]
    geometry_window  window [B,t,P,D] -> the newest frame's geometry tokens, view token, local
                     points, confidence and raw camera-head output
    fusion           semantic + geometry of the newest frame + its camera pose -> H_t [B,N,C]
Between the last two the runtime turns the camera head's output into a pose (an SVD of 3x3
matrices, which ONNX lacks) or takes the robot's pose. The memory update and the language model
stay in torch: they are not per-frame-heavy (memory) or not per-frame at all (answering).
"""
