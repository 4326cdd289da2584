"""Launch vlm2_node: `ros2 launch vlm2_ros vlm2.launch.py [namespace:=robot1] [params_file:=...]
[use_sim_time:=true] [image_topic:=/front/image_raw] [camera_info_topic:=/front/camera_info]
[autostart:=true] [log_level:=info]`.

The node is a lifecycle node; with autostart (default) it configures and activates itself. Set
autostart:=false when a lifecycle manager drives it. The camera arguments remap the default
camera's topics (camera/image_raw, camera/camera_info); for several cameras, list them in the
params file instead.
"""
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def default_params_file() -> str:
    try:
        return str(Path(get_package_share_directory("vlm2_ros")) / "config" / "vlm2.yaml")
    except PackageNotFoundError:  # launched from a source checkout
        return str(Path(__file__).resolve().parent.parent / "config" / "vlm2.yaml")


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of vlm2_node"),
        DeclareLaunchArgument("params_file", default_value=default_params_file(),
                              description="vlm2_node parameters (see config/vlm2.yaml)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay with `ros2 bag play --clock`)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate on start (false: a lifecycle manager does)"),
        DeclareLaunchArgument("image_topic", default_value="camera/image_raw",
                              description="remap the default camera's image topic"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera/camera_info",
                              description="remap the default camera's camera info topic"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
    ]
    node = Node(
        package="vlm2_ros",
        executable="vlm2_node",
        name="vlm2_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"),
                    {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                     "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)}],
        remappings=[("camera/image_raw", LaunchConfiguration("image_topic")),
                    ("camera/camera_info", LaunchConfiguration("camera_info_topic"))],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription(arguments + [node])
