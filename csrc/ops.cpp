// Schemas of the native ops and the Python module entry point of pit_sampler._C.
//
// The public ops pit_sampler::sweep and pit_sampler::unmask_table are defined in Python
// (pit_sampler/ops.py, torch.library.custom_op with fake kernels), which picks a backend at run time.
// The native kernels register under their own namespace, pit_sampler_native, with the same op names
// and argument lists (tests/test_native.py checks that the schemas match), so the Python op stays the
// only owner of the public schema and the native backend is just another implementation it calls.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(pit_sampler_native, m) {
  m.def(
      "sweep(Tensor logits, Tensor rows, Tensor steps, Tensor x0, Tensor prev, Tensor seeds, Tensor cdf, "
      "Tensor rate, SymInt mask_id, float temperature, SymInt rule, bool score, bool argmax_final, bool with_counts) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("unmask_table(Tensor x, Tensor seeds, Tensor cdf, SymInt mask_id, SymInt rule) -> Tensor");
}

// `import pit_sampler._C` loads the library (registering the ops above); the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "native kernels of pit_sampler (torch.ops.pit_sampler_native)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
