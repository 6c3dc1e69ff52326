// Makes burstkern/_C.so importable from Python so its static TORCH_LIBRARY registrations run. No pybind11:
// the module has no Python functions, which keeps it on the stable ABI (Py_LIMITED_API). The CMake build of the
// same sources (a plain LibTorch op library) leaves this out by not defining BURSTKERN_PYTHON_MODULE.
#ifdef BURSTKERN_PYTHON_MODULE
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif
