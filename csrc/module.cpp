// The Python module r1kernels._C. It defines no schema: every `r1kernels::` schema is defined once,
// in Python (r1kernels/_library.py SCHEMAS), because the ops must exist where this extension is not
// built too. Loading the shared library runs the kernel registrations (TORCH_LIBRARY_IMPL blocks) of
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); the dispatcher checks each kernel's signature
// against its schema when r1kernels._library defines it.
#include <Python.h>

// `import r1kernels._C` only needs a module object: loading the shared library is what registers
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
