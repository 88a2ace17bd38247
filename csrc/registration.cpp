// The single TORCH_LIBRARY block of the r1kernels namespace: every schema, verbatim as in
// r1kernels/_library.py SCHEMAS (tests/test_registration.py checks they agree). Kernels register per
// backend in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA).
#include <Python.h>
#include <torch/library.h>

// `import r1kernels._C` only needs a module object: loading the shared library runs the
// registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(r1kernels, m) {
  m.def("group_advantages(Tensor rewards, int group_size, int scale_mode, bool leave_one_out, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fused_logprobs(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, float temperature) -> (Tensor, Tensor, Tensor)");
  m.def("fused_logprobs_backward(Tensor grad_logp, Tensor? grad_entropy, Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor lse, Tensor entropy, float temperature) -> (Tensor, Tensor, Tensor)");
  m.def("fused_grpo_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor token_scale, Tensor token_adv, Tensor? old_logp, Tensor? ref_logp, float beta, float eps_low, float eps_high, float? delta, float temperature, int loss_kind, float sapo_tpos, float sapo_tneg, bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("logits_grpo_loss(Tensor logits, Tensor targets, Tensor token_scale, Tensor token_adv, Tensor? old_logp, Tensor? ref_logp, float beta, float eps_low, float eps_high, float? delta, float temperature, int loss_kind, float sapo_tpos, float sapo_tneg, bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("grpo_token_loss(Tensor logp, Tensor token_scale, Tensor token_adv, Tensor? old_logp, Tensor? ref_logp, float beta, float eps_low, float eps_high, float? delta, int loss_kind, float sapo_tpos, float sapo_tneg) -> (Tensor, Tensor)");
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.def("copy_blocks(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor block_mapping) -> ()");
  m.def("paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, Tensor cu_seqlens_q, float scale, bool causal) -> (Tensor, Tensor)");
  m.def("merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)");
  m.def("tree_attention(Tensor q, Tensor k, Tensor v, Tensor parents, Tensor cu_nodes, Tensor? k_cache, Tensor? v_cache, Tensor? block_tables, Tensor? prefix_lens, float scale) -> (Tensor, Tensor)");
  m.def("skinny_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("rmsnorm_qkv_rope(Tensor h, Tensor norm_weight, float eps, Tensor wq, Tensor? bq, Tensor wk, Tensor? bk, Tensor wv, Tensor? bv, Tensor? q_norm_weight, Tensor? k_norm_weight, float qk_eps, Tensor cos, Tensor sin, int head_dim) -> (Tensor, Tensor, Tensor)");
  m.def("oproj_mlp(Tensor h, Tensor attn, Tensor wo, Tensor? bo, Tensor norm_weight, float eps, Tensor w_gate, Tensor? b_gate, Tensor w_up, Tensor? b_up, Tensor w_down, Tensor? b_down) -> Tensor");
}
