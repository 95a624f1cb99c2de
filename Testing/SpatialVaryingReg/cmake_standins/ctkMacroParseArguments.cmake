# Stand-in for CTK's CMake/ctkMacroParseArguments.cmake (not pinned in ../shared/third_party), which the
# pinned ctkMacroCompilePythonScript.cmake includes from ${CTK_CMAKE_DIR}. Same contract as CTK's macro:
# ctkMacroParseArguments(prefix "<value keywords>" "<option keywords>" ${ARGN}) sets
# <prefix>_<keyword> to the values following each value keyword (unset when the keyword is absent, so
# `if(DEFINED ...)` tells), <prefix>_<option> to TRUE/FALSE, and <prefix>_DEFAULT_ARGS to the leading
# values. Built on CMake's cmake_parse_arguments.
macro(ctkMacroParseArguments prefix arg_names option_names)
  cmake_parse_arguments(_ctk_stand_in "${option_names}" "" "${arg_names}" DEFAULT_ARGS ${ARGN})
  set(${prefix}_DEFAULT_ARGS ${_ctk_stand_in_DEFAULT_ARGS})
  foreach(_ctk_name IN ITEMS ${arg_names})
    if(DEFINED _ctk_stand_in_${_ctk_name})
      set(${prefix}_${_ctk_name} ${_ctk_stand_in_${_ctk_name}})
    else()
      unset(${prefix}_${_ctk_name})
    endif()
  endforeach()
  foreach(_ctk_name IN ITEMS ${option_names})
    set(${prefix}_${_ctk_name} ${_ctk_stand_in_${_ctk_name}})
  endforeach()
endmacro()
