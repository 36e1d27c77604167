# dtu_warnings: the project's warning set, linked by every target we compile.
add_library(dtu_warnings INTERFACE)
target_compile_options(dtu_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion
  -Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual)
if(DTU_WERROR)
  target_compile_options(dtu_warnings INTERFACE -Werror)
endif()
# Release hardening: fortify, stack protector, full RELRO. (PIE: Debian's g++ and clang build
# position-independent executables by default; forcing -fPIC on libraries would also break the
# precompiled header executables share with them.)
if(CMAKE_BUILD_TYPE MATCHES "Rel" AND NOT DTU_SANITIZE AND NOT DTU_TSAN)
  target_compile_options(dtu_warnings INTERFACE
    -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection -fcf-protection)
  target_link_options(dtu_warnings INTERFACE -Wl,-z,relro,-z,now)
endif()
