// The parts of Comm every implementation shares: dtype tables, labels and
// timeout messages, and the host-side half-precision wire conversion.
#include "core/parallel/comm.h"

#include <algorithm>
#include <cstdio>

#include "core/parallel/half.h"

namespace m6 {

size_t comm_dtype_size(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return 4;
    case CommDType::BF16:
      return 2;
    case CommDType::F16:
      return 2;
    case CommDType::I32:
      return 4;
    case CommDType::I64:
      return 8;
    case CommDType::U8:
      return 1;
    case CommDType::F64:
      return 8;
  }
  return 0;
}

const char* comm_dtype_name(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return "f32";
    case CommDType::BF16:
      return "bf16";
    case CommDType::F16:
      return "f16";
    case CommDType::I32:
      return "i32";
    case CommDType::I64:
      return "i64";
    case CommDType::U8:
      return "u8";
    case CommDType::F64:
      return "f64";
  }
  return "?";
}

CommLabel::CommLabel(CommActivity& a, std::string label) : a_(a), prev_(std::move(a.label)) {
  a_.label = std::move(label);
}
CommLabel::~CommLabel() { a_.label = std::move(prev_); }

std::string comm_timeout_message(const CommActivity& a, double waited_s, const char* op,
                                 const std::string& comm_name, int comm_size) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", waited_s);
  const std::string where =
      a.step > 0 ? fmt("step ", a.step) : std::string("before the first step");
  return fmt(where, ": timed out after ", secs, " s waiting in ", op, " (",
             a.label.empty() ? "unlabelled" : a.label, ") on the ", comm_name, " communicator (",
             comm_size,
             " ranks): a peer rank is stopped, stuck or dead; aborting the job "
             "(parallel.timeout_s = ",
             a.timeout_s, ")");
}

Comm::Comm(std::shared_ptr<CommActivity> activity)
    : activity_(activity ? std::move(activity) : std::make_shared<CommActivity>()) {}

int64_t Comm::a2a_wire_bytes(const int64_t* send_counts, CommDType t) const {
  int64_t n = 0;
  for (int p = 0; p < size(); ++p)
    if (p != rank()) n += send_counts[p];
  return n * static_cast<int64_t>(comm_dtype_size(t));
}

void Comm::all_reduce_f32(float* buf, size_t count, ReduceOp op, CommDType wire, float scale) {
  if (wire == CommDType::F32) return all_reduce(buf, count, CommDType::F32, op);
  M6_CHECK(wire == CommDType::BF16 || wire == CommDType::F16, "wire precision ",
           comm_dtype_name(wire), " is not a float type");
  half_send_.resize(count);
  f32_to_half(half_send_.data(), buf, count, wire, scale);
  all_reduce(half_send_.data(), count, wire, op);
  half_to_f32(buf, half_send_.data(), count, wire, 1.0f / scale);
}

void Comm::all_to_all_v_f32(const float* send, const int64_t* send_counts,
                            const int64_t* send_displs, float* recv, const int64_t* recv_counts,
                            const int64_t* recv_displs, CommDType wire, float scale) {
  if (wire == CommDType::F32)
    return all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs,
                        CommDType::F32);
  M6_CHECK(wire == CommDType::BF16 || wire == CommDType::F16, "wire precision ",
           comm_dtype_name(wire), " is not a float type");
  // Only the peers' blocks are converted; the displacements keep their meaning.
  const int P = size();
  int64_t send_end = 0, recv_end = 0;
  for (int p = 0; p < P; ++p) {
    send_end = std::max(send_end, send_displs[p] + send_counts[p]);
    recv_end = std::max(recv_end, recv_displs[p] + recv_counts[p]);
  }
  half_send_.resize(static_cast<size_t>(send_end));
  half_recv_.resize(static_cast<size_t>(recv_end));
  for (int p = 0; p < P; ++p)
    f32_to_half(half_send_.data() + send_displs[p], send + send_displs[p],
                static_cast<size_t>(send_counts[p]), wire, scale);
  all_to_all_v(half_send_.data(), send_counts, send_displs, half_recv_.data(), recv_counts,
               recv_displs, wire);
  for (int p = 0; p < P; ++p)
    half_to_f32(recv + recv_displs[p], half_recv_.data() + recv_displs[p],
                static_cast<size_t>(recv_counts[p]), wire, 1.0f / scale);
}

void Comm::all_to_all(const void* send, void* recv, size_t count, CommDType t) {
  const int P = size();
  std::vector<int64_t> counts(P, static_cast<int64_t>(count)), displs(P);
  for (int p = 0; p < P; ++p) displs[p] = static_cast<int64_t>(count) * p;
  all_to_all_v(send, counts.data(), displs.data(), recv, counts.data(), displs.data(), t);
}

double Comm::all_reduce_scalar(double v, ReduceOp op) {
  all_reduce(&v, 1, CommDType::F64, op);
  return v;
}

int64_t Comm::all_reduce_scalar(int64_t v, ReduceOp op) {
  all_reduce(&v, 1, CommDType::I64, op);
  return v;
}

}  // namespace m6
