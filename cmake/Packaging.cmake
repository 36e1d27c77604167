# Install rules for what packaging/ holds, and the three Debian packages CPack builds from them
# (`make package`, docs/packages.md). Each program's install(TARGETS) rule sits beside its target,
# in one of these install components:
#
#   devmgr    -> dtubroker-devmgr     devmgr, devmgrctl, config, group list, policy, unit, sysusers,
#                                     tmpfiles
#   agent     -> dtubroker-agent      dtu-agent, dtu-simctl, config, unit, udev rule, sysusers, tmpfiles
#   services  -> dtubroker-services   the dtu CUPS backend, dtu-print, dtu-unit, dtu-sample-service
#
# `cmake --install <build> --prefix DIR` installs all three under DIR; cpack installs each
# component with the prefix /usr and packs it.
include(GNUInstallDirs)

set(DTU_PACKAGING_DIR ${CMAKE_SOURCE_DIR}/packaging)
set(DTU_PACKAGE_MAINTAINER "dtubroker maintainers <dtubroker@example.org>" CACHE STRING
    "Maintainer field (and contact) of the Debian packages: 'Name <address>'")
set(DTU_PACKAGE_HOMEPAGE "" CACHE STRING "Homepage field of the Debian packages (empty: none)")
# Packaging only packs what is built (`make package` builds first): cpack's preinstall step and
# `make install` must not start a build, least of all from the packaging test inside ctest.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)

# dtu_install_outside_usr(COMPONENT DESTINATION FILE...): installs FILEs (mode 0644) into a
# directory Debian keeps outside /usr (etc/dtubroker, lib/systemd/system, lib/udev/rules.d). The
# directory is chosen at install time, because one build tree serves both cpack and `cmake
# --install`: with the prefix /usr (the packages) it is /DESTINATION, as GNUInstallDirs puts
# sysconfdir at /etc for that prefix; with any other prefix it is PREFIX/DESTINATION, so that
# nothing lands outside the prefix.
function(dtu_install_outside_usr component destination)
  set(files "")
  foreach(file IN LISTS ARGN)
    string(APPEND files " \"${file}\"")
  endforeach()
  install(CODE "
    if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
      set(dtu_root \"\")
    else()
      set(dtu_root \"\${CMAKE_INSTALL_PREFIX}\")
    endif()
    file(INSTALL DESTINATION \"\${dtu_root}/${destination}\" TYPE FILE
         PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ FILES ${files})"
    COMPONENT ${component})
endfunction()

# Man pages, gzipped at build time (-n: no name or time stamp, so a rebuild gives the same bytes).
set(dtu_man_pages
    devmgr:devmgr.8 devmgr:devmgrctl.8
    agent:dtu-agent.8 agent:dtu-simctl.1
    services:dtu-cups-backend.7 services:dtu-print.8 services:dtu-unit.1 services:dtu-sample-service.1)
set(dtu_man_outputs "")
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/packaging/man)
foreach(entry IN LISTS dtu_man_pages)
  string(REPLACE ":" ";" entry "${entry}")
  list(GET entry 0 component)
  list(GET entry 1 page)
  string(REGEX REPLACE "^.*\\.([1-8])$" "\\1" section "${page}")
  set(source ${DTU_PACKAGING_DIR}/man/${page})
  set(output ${CMAKE_BINARY_DIR}/packaging/man/${page}.gz)
  add_custom_command(OUTPUT ${output}
    COMMAND sh -c "gzip -9nc \"$1\" > \"$2\"" gzip-man ${source} ${output}
    DEPENDS ${source} VERBATIM)
  list(APPEND dtu_man_outputs ${output})
  install(FILES ${output} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section} COMPONENT ${component})
endforeach()

# Debian's changelog, gzipped the same way; its latest entry must name the version we package.
set(DTU_PACKAGE_RELEASE 1)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${DTU_PACKAGING_DIR}/deb/changelog)
file(STRINGS ${DTU_PACKAGING_DIR}/deb/changelog dtu_changelog_head LIMIT_COUNT 1)
string(REPLACE "." "\\." dtu_version_regex "${PROJECT_VERSION}-${DTU_PACKAGE_RELEASE}")
if(NOT dtu_changelog_head MATCHES "^dtubroker \\(${dtu_version_regex}\\) ")
  string(REGEX MATCH "^[^ ]+ \\([^)]*\\)" dtu_changelog_head "${dtu_changelog_head}")
  message(FATAL_ERROR "packaging/deb/changelog: its latest entry is '${dtu_changelog_head}', but "
          "the packages are version ${PROJECT_VERSION}-${DTU_PACKAGE_RELEASE} (project VERSION and "
          "DTU_PACKAGE_RELEASE in cmake/Packaging.cmake): add an entry for it at the top")
endif()
set(dtu_changelog ${CMAKE_BINARY_DIR}/packaging/changelog.Debian.gz)
add_custom_command(OUTPUT ${dtu_changelog}
  COMMAND sh -c "gzip -9nc \"$1\" > \"$2\"" gzip-changelog ${DTU_PACKAGING_DIR}/deb/changelog
          ${dtu_changelog}
  DEPENDS ${DTU_PACKAGING_DIR}/deb/changelog VERBATIM)
add_custom_target(dtu_packaging_files ALL DEPENDS ${dtu_man_outputs} ${dtu_changelog})

foreach(component devmgr agent services)
  install(FILES ${DTU_PACKAGING_DIR}/deb/copyright ${dtu_changelog}
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/dtubroker-${component} COMPONENT ${component})
endforeach()

# Configuration, units, users and runtime files.
dtu_install_outside_usr(devmgr etc/dtubroker ${DTU_PACKAGING_DIR}/config/devmgr.json
  ${DTU_PACKAGING_DIR}/config/group.json ${DTU_PACKAGING_DIR}/policy/policy.json)
dtu_install_outside_usr(devmgr lib/systemd/system ${DTU_PACKAGING_DIR}/systemd/devmgr.service)
# sysusers.d and tmpfiles.d live in lib/, not the multiarch CMAKE_INSTALL_LIBDIR.
install(FILES ${DTU_PACKAGING_DIR}/systemd/dtubroker.sysusers
        DESTINATION lib/sysusers.d RENAME dtubroker.conf COMPONENT devmgr)
install(FILES ${DTU_PACKAGING_DIR}/systemd/dtubroker.tmpfiles
        DESTINATION lib/tmpfiles.d RENAME dtubroker.conf COMPONENT devmgr)

dtu_install_outside_usr(agent etc/dtubroker ${DTU_PACKAGING_DIR}/config/dtu-agent.json)
dtu_install_outside_usr(agent lib/systemd/system ${DTU_PACKAGING_DIR}/systemd/dtu-agent.service)
dtu_install_outside_usr(agent lib/udev/rules.d ${DTU_PACKAGING_DIR}/udev/70-dtubroker.rules)
install(FILES ${DTU_PACKAGING_DIR}/systemd/dtu-agent.sysusers
        DESTINATION lib/sysusers.d RENAME dtu-agent.conf COMPONENT agent)
install(FILES ${DTU_PACKAGING_DIR}/systemd/dtu-agent.tmpfiles
        DESTINATION lib/tmpfiles.d RENAME dtu-agent.conf COMPONENT agent)

# The packages. Each has its maintainer scripts and conffiles list in packaging/deb/<package>/.
set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL devmgr agent services)
set(CPACK_PACKAGE_NAME dtubroker)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${DTU_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${DTU_PACKAGE_RELEASE})
set(CPACK_DEBIAN_PACKAGE_SOURCE dtubroker)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
if(DTU_PACKAGE_HOMEPAGE)
  set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${DTU_PACKAGE_HOMEPAGE}")
endif()
# Depends: the shared libraries the binaries link (dpkg-shlibdeps, from dpkg-dev), plus what the
# maintainer scripts need.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(dtu_sysusers_provider "systemd | systemd-standalone-sysusers | systemd-sysusers")

set(CPACK_DEBIAN_DEVMGR_PACKAGE_NAME dtubroker-devmgr)
set(CPACK_DEBIAN_DEVMGR_PACKAGE_SECTION net)
set(CPACK_DEBIAN_DEVMGR_PACKAGE_DEPENDS "${dtu_sysusers_provider}")
set(CPACK_DEBIAN_DEVMGR_DESCRIPTION "dtubroker device manager for servers sharing thin-client USB devices
dtubroker lets a group of Linux servers share the USB devices plugged into
thin clients (desktop units, DTUs): printers, scanners, card readers,
storage. Each DTU runs dtu-agent; each server runs one devmgr.

This package holds devmgr, the device manager: it keeps the devices of its
DTUs, forms an authenticated TLS mesh with the other managers of its group,
and leases devices to the services of its server through a Unix socket. It
also holds devmgrctl, the operator's command line, the default
configuration and policy, the systemd unit (not enabled) and the user
dtubroker it runs as. Create the keys with devmgrctl keygen before starting
it.")

set(CPACK_DEBIAN_AGENT_PACKAGE_NAME dtubroker-agent)
set(CPACK_DEBIAN_AGENT_PACKAGE_SECTION net)
set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "${dtu_sysusers_provider}")
set(CPACK_DEBIAN_AGENT_PACKAGE_RECOMMENDS "udev")
set(CPACK_DEBIAN_AGENT_DESCRIPTION "dtubroker agent for thin clients whose USB devices servers share
dtubroker lets a group of Linux servers share the USB devices plugged into
thin clients (desktop units, DTUs): printers, scanners, card readers,
storage. Each DTU runs dtu-agent; each server runs one devmgr.

This package holds dtu-agent, which reports the DTU's USB devices to its
managers over TLS and carries their traffic, with its configuration, its
systemd unit (not enabled), the user dtu-agent it runs as and a udev rule
that gives that user the USB device nodes without root. dtu-simctl plugs
and unplugs the devices of the agent's simulated backend, for trials
without hardware.")

set(CPACK_DEBIAN_SERVICES_PACKAGE_NAME dtubroker-services)
set(CPACK_DEBIAN_SERVICES_PACKAGE_SECTION net)
set(CPACK_DEBIAN_SERVICES_PACKAGE_RECOMMENDS "dtubroker-devmgr")
set(CPACK_DEBIAN_SERVICES_PACKAGE_SUGGESTS "cups-daemon")
set(CPACK_DEBIAN_SERVICES_DESCRIPTION "dtubroker services using thin-client USB devices
dtubroker lets a group of Linux servers share the USB devices plugged into
thin clients (desktop units, DTUs): printers, scanners, card readers,
storage. Services on a server lease those devices from the server's devmgr.

This package holds the services: the dtu CUPS backend, which prints to a
DTU's printer from any server of the group; dtu-print, which keeps a CUPS
queue for each such printer; dtu-unit, which leases a device and streams
its data; and dtu-sample-service, an example of a service built on
libdtu-client.")

foreach(package devmgr agent services)
  string(TOUPPER ${package} upper)
  set(extra "")
  foreach(control postinst postrm conffiles)
    if(EXISTS ${DTU_PACKAGING_DIR}/deb/dtubroker-${package}/${control})
      list(APPEND extra ${DTU_PACKAGING_DIR}/deb/dtubroker-${package}/${control})
    endif()
  endforeach()
  set(CPACK_DEBIAN_${upper}_PACKAGE_CONTROL_EXTRA "${extra}")
endforeach()

include(CPack)
