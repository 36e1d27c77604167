// The runner of the benches that doctest hosts (group, hotplug, scale, transport): each has one
// TEST_CASE that measures and prints, so the integration harness's REQUIREs can say why a bench
// could not run. Only that is printed; a bench never fails on a number.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

int main(int argc, char** argv) {
  doctest::Context context;
  context.setOption("minimal", true);  // only why the bench could not run, if it could not
  context.setOption("no-version", true);
  context.applyCommandLine(argc, argv);
  return context.run();
}
