# Debian package: `cpack -G DEB` in a build directory (packaging/check-deb.sh does it and checks
# the result). Included at the end of the top-level CMakeLists.txt.
#
#   /usr/bin/idemproxy                        install(TARGETS) in the top-level file
#   /etc/idemproxy/idemproxy.yaml             conffile: local edits survive upgrades
#   /lib/systemd/system/idemproxy.service     not enabled or started by the package
#   /usr/share/man/man1/idemproxy.1.gz
#
# Debian 12 still ships units under /lib (no /usr/lib moves during the usrmerge moratorium).

set(IDEMPROXY_DEFAULT_CONFIG "${PROJECT_SOURCE_DIR}/config/idemproxy.yaml"
    CACHE FILEPATH "Configuration installed as /etc/idemproxy/idemproxy.yaml")
set(_pkg_dir "${PROJECT_SOURCE_DIR}/packaging")
set(_pkg_out "${PROJECT_BINARY_DIR}/packaging")

install(FILES "${IDEMPROXY_DEFAULT_CONFIG}" DESTINATION /etc/idemproxy RENAME idemproxy.yaml)
install(FILES "${_pkg_dir}/idemproxy.service" DESTINATION /lib/systemd/system)

# The man page, gzipped as Debian policy wants (-n: no name or time stamp, so the package is
# reproducible). Plain when gzip is missing.
find_program(IDEMPROXY_GZIP gzip)
if(IDEMPROXY_GZIP)
  add_custom_command(
    OUTPUT "${_pkg_out}/idemproxy.1.gz"
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${_pkg_out}"
    COMMAND "${IDEMPROXY_GZIP}" -9 -n -c "${_pkg_dir}/idemproxy.1" > "${_pkg_out}/idemproxy.1.gz"
    DEPENDS "${_pkg_dir}/idemproxy.1"
    VERBATIM)
  add_custom_target(idemproxy_manpage ALL DEPENDS "${_pkg_out}/idemproxy.1.gz")
  install(FILES "${_pkg_out}/idemproxy.1.gz" DESTINATION share/man/man1)
else()
  install(FILES "${_pkg_dir}/idemproxy.1" DESTINATION share/man/man1)
endif()

# Control files: conffiles, generated; maintainer scripts from packaging/deb.
file(WRITE "${_pkg_out}/deb/conffiles" "/etc/idemproxy/idemproxy.yaml\n")

set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "idemproxy")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_VENDOR "idemproxy")
set(CPACK_PACKAGE_CONTACT "idemproxy maintainers <idemproxy@example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "idempotency reverse proxy for HTTP payment APIs")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_STRIP_FILES TRUE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# The body under the summary line; CPack indents it and turns empty lines into " .".
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "idemproxy sits in front of an unmodified HTTP API and makes its unsafe
requests idempotent: the first request with an Idempotency-Key is forwarded
and its answer recorded durably (LMDB); every retry with the same key gets
the recorded answer back without reaching the backend.

Runs as a hardened systemd service (Type=notify, watchdog) and exposes
Prometheus metrics.")
# Depends from the binary's libraries (needs dpkg-shlibdeps, in dpkg-dev).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${_pkg_out}/deb/conffiles"
    "${_pkg_dir}/deb/postinst"
    "${_pkg_dir}/deb/prerm"
    "${_pkg_dir}/deb/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)  # scripts 0755, conffiles 0644

include(CPack)
