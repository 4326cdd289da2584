# vlm2_fix_python_include_dirs()
#
# Two fixes for building against the ROS 2 wheels from PyPI in a Python venv (the `make` route).
# Both are no-ops on a regular ROS 2 install, where neither situation arises.
#
# 1. The wheels export CMake targets such as std_msgs::std_msgs__rosidl_generator_py whose
#    INTERFACE_INCLUDE_DIRECTORIES name the wheel build machine's Python and NumPy headers
#    (/opt/python/cp311-cp311/include/python3.11, .../numpy/_core/include). Linking against them
#    makes CMake's generate step fail ("Imported target ... includes non-existent path"). Every
#    such missing Python / NumPy include directory of an imported target is pointed at this
#    interpreter's own (Python3_INCLUDE_DIRS, Python3_NumPy_INCLUDE_DIRS).
# 2. rosidl_generator_py gives this package's <pkg>__rosidl_generator_py library the Python and
#    NumPy include directories as PUBLIC, so they are exported. When the venv lies inside the
#    source tree (.venv/ of this repository), CMake refuses to export a path "prefixed in the
#    source directory". Such paths are kept for building ($<BUILD_INTERFACE:...>) and left out
#    of the installed export; a package using these interfaces from C gets the Python headers
#    from its own rosidl_generator_py target.
function(vlm2_fix_python_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)

  get_property(_imported DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  set(_fixed "")
  foreach(_target IN LISTS _imported)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
        list(APPEND _new_dirs "${_dir}")
      elseif(_dir MATCHES "/numpy/(_core|core)/include$")
        list(APPEND _new_dirs ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(_dir MATCHES "/include/python3\\.[0-9]+[a-z]*$")
        list(APPEND _new_dirs ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _new_dirs "${_dir}")  # not ours to fix: let CMake report it
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new_dirs)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
      list(APPEND _fixed ${_target})
    endif()
  endforeach()
  if(_fixed)
    list(LENGTH _fixed _count)
    message(STATUS "vlm2_ros: ${_count} imported targets named missing Python/NumPy include "
      "directories; using ${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
  endif()

  get_property(_own DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(_target IN LISTS _own)
    get_target_property(_type ${_target} TYPE)
    if(_type STREQUAL "UTILITY")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      set(_in_tree FALSE)
      if(NOT _dir MATCHES "^\\$<")
        cmake_path(IS_PREFIX CMAKE_SOURCE_DIR "${_dir}" NORMALIZE _in_source)
        cmake_path(IS_PREFIX CMAKE_BINARY_DIR "${_dir}" NORMALIZE _in_binary)
        if(_in_source OR _in_binary)
          set(_in_tree TRUE)
        endif()
      endif()
      if(_in_tree)
        list(APPEND _new_dirs "$<BUILD_INTERFACE:${_dir}>")
        set(_changed TRUE)
      else()
        list(APPEND _new_dirs "${_dir}")
      endif()
    endforeach()
    if(_changed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
      message(STATUS "vlm2_ros: ${_target}: include directories inside the source tree are not exported")
    endif()
  endforeach()
endfunction()
