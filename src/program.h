// Decoding and validation of the program bytes (docs/program-format.md). Shared by all executors.
// Any malformed input yields `false` and a message; nothing here can crash on garbage bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ops.h"
#include "reductions.h"

namespace jaxkeops {

enum Role : int32_t { kParam = 0, kOuter = 1, kInner = 2, kPair = 3 };

inline const char* role_name(int32_t role) {
  switch (role) {
    case kParam: return "param";
    case kOuter: return "outer";
    case kInner: return "inner";
    case kPair: return "pair";
    default: return "?";
  }
}

// An instruction of role `out` may read registers of role `arg`.
inline bool role_contains(int32_t out, int32_t arg) {
  return out == arg || arg == kParam || out == kPair;
}

// Limits beyond the format's own rules, so that garbage cannot request absurd allocations.
inline constexpr int32_t kMaxDim = 1 << 16;
inline constexpr int32_t kMaxRegisters = 1 << 16;

struct InputSpec {
  int32_t role;
  int32_t dim;
};

struct RegisterSpec {
  int32_t role;
  int32_t dim;
};

struct Instruction {
  int32_t opcode;
  int32_t out;
  std::vector<int32_t> args;
  std::vector<int32_t> int_params;
  std::vector<double> float_params;
};

struct Program {
  int32_t version = 0;
  int32_t reduction = 0;
  std::vector<int32_t> reduction_params;
  std::vector<InputSpec> inputs;
  std::vector<RegisterSpec> registers;
  std::vector<Instruction> instructions;
  std::vector<int32_t> results;
  std::vector<int32_t> result_dims;  // derived
  // derived, per instruction: a TensorDot's (out, a, b) index triples, sorted by output
  // (TensorDotSpec::sorted_term_table); empty for other ops. Built once, at decode time.
  std::vector<std::vector<int32_t>> term_tables;

  // Heap bytes held by the decoded form (for the caches' byte budgets).
  size_t memory_bytes() const {
    size_t n = sizeof(Program) + reduction_params.size() * 4 + inputs.size() * sizeof(InputSpec) +
               registers.size() * sizeof(RegisterSpec) + (results.size() + result_dims.size()) * 4;
    for (const Instruction& ins : instructions)
      n += sizeof(Instruction) + (ins.args.size() + ins.int_params.size()) * 4 +
           ins.float_params.size() * 8;
    for (const std::vector<int32_t>& t : term_tables) n += sizeof(t) + t.size() * 4;
    return n;
  }
};

namespace detail {

class ByteReader {
 public:
  ByteReader(const char* data, size_t size) : data_(data), size_(size) {}
  size_t remaining() const { return size_ - pos_; }
  size_t pos() const { return pos_; }

  bool i32(int32_t* v) {
    if (remaining() < 4) return false;
    unsigned char b[4];
    std::memcpy(b, data_ + pos_, 4);
    uint32_t u = uint32_t(b[0]) | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) |
                 (uint32_t(b[3]) << 24);
    std::memcpy(v, &u, 4);
    pos_ += 4;
    return true;
  }

  bool f64(double* v) {
    if (remaining() < 8) return false;
    unsigned char b[8];
    std::memcpy(b, data_ + pos_, 8);
    uint64_t u = 0;
    for (int k = 7; k >= 0; --k) u = (u << 8) | b[k];
    std::memcpy(v, &u, 8);
    pos_ += 8;
    return true;
  }

  bool bytes(char* out, size_t n) {
    if (remaining() < n) return false;
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return true;
  }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace detail

// Decodes and validates. On failure returns false and sets *error.
inline bool decode_program(const char* data, size_t size, Program* prog, std::string* error) {
  detail::ByteReader rd(data, size);
  auto fail = [&](const std::string& msg) {
    *error = "jaxkeops program: " + msg + " (at byte " + std::to_string(rd.pos()) + " of " +
             std::to_string(size) + ")";
    return false;
  };
  // Reads a count whose elements take at least `min_elem_bytes` each.
  auto read_count = [&](int32_t* n, const char* what, size_t min_elem_bytes) {
    if (!rd.i32(n)) return fail(std::string("truncated while reading ") + what);
    if (*n < 0) return fail(std::string(what) + " is negative (" + std::to_string(*n) + ")");
    if (static_cast<uint64_t>(*n) * min_elem_bytes > rd.remaining())
      return fail(std::string(what) + " = " + std::to_string(*n) + " exceeds the remaining bytes");
    return true;
  };
  auto read_i32 = [&](int32_t* v, const char* what) {
    if (!rd.i32(v)) return fail(std::string("truncated while reading ") + what);
    return true;
  };

  char magic[4];
  if (!rd.bytes(magic, 4)) return fail("truncated magic");
  if (std::memcmp(magic, "JKP1", 4) != 0) return fail("bad magic (expected \"JKP1\")");
  if (!read_i32(&prog->version, "version")) return false;
  if (prog->version != 1)
    return fail("unsupported version " + std::to_string(prog->version) + " (expected 1)");
  if (!read_i32(&prog->reduction, "reduction")) return false;

  int32_t n;
  if (!read_count(&n, "n_reduction_params", 4)) return false;
  prog->reduction_params.resize(n);
  for (int32_t k = 0; k < n; ++k)
    if (!read_i32(&prog->reduction_params[k], "reduction_params")) return false;

  if (!read_count(&n, "n_inputs", 8)) return false;
  prog->inputs.resize(n);
  for (int32_t k = 0; k < n; ++k) {
    InputSpec& in = prog->inputs[k];
    if (!read_i32(&in.role, "input role") || !read_i32(&in.dim, "input dim")) return false;
    if (in.role < kParam || in.role > kInner)
      return fail("input " + std::to_string(k) + " has role " + std::to_string(in.role) +
                  " (expected 0 param, 1 outer or 2 inner)");
    if (in.dim < 1 || in.dim > kMaxDim)
      return fail("input " + std::to_string(k) + " has dim " + std::to_string(in.dim) +
                  " (expected 1.." + std::to_string(kMaxDim) + ")");
  }

  if (!read_count(&n, "n_registers", 8)) return false;
  if (n > kMaxRegisters) return fail("too many registers (" + std::to_string(n) + ")");
  prog->registers.resize(n);
  for (int32_t k = 0; k < n; ++k) {
    RegisterSpec& r = prog->registers[k];
    if (!read_i32(&r.role, "register role") || !read_i32(&r.dim, "register dim")) return false;
    if (r.role < kParam || r.role > kPair)
      return fail("register " + std::to_string(k) + " has role " + std::to_string(r.role) +
                  " (expected 0..3)");
    if (r.dim < 1 || r.dim > kMaxDim)
      return fail("register " + std::to_string(k) + " has dim " + std::to_string(r.dim) +
                  " (expected 1.." + std::to_string(kMaxDim) + ")");
  }
  const int32_t n_regs = n;

  if (!read_count(&n, "n_instructions", 20)) return false;
  prog->instructions.resize(n);
  prog->term_tables.assign(n, {});
  // Which instruction last wrote each register, in program order (-1: never).
  std::vector<int32_t> last_writer(n_regs, -1);
  int64_t total_terms = 0;  // TensorDot terms of the whole program
  // For the hoisting check: the writer each argument read sees in program order.
  std::vector<std::vector<int32_t>> seen_writer(n);
  for (int32_t k = 0; k < n; ++k) {
    Instruction& ins = prog->instructions[k];
    const std::string at = "instruction " + std::to_string(k);
    if (!read_i32(&ins.opcode, "opcode") || !read_i32(&ins.out, "out_register")) return false;
    int32_t m;
    if (!read_count(&m, "n_args", 4)) return false;
    ins.args.resize(m);
    for (int32_t a = 0; a < m; ++a)
      if (!read_i32(&ins.args[a], "arg_registers")) return false;
    if (!read_count(&m, "n_int_params", 4)) return false;
    ins.int_params.resize(m);
    for (int32_t a = 0; a < m; ++a)
      if (!read_i32(&ins.int_params[a], "int_params")) return false;
    if (!read_count(&m, "n_float_params", 8)) return false;
    ins.float_params.resize(m);
    for (int32_t a = 0; a < m; ++a)
      if (!rd.f64(&ins.float_params[a])) return fail("truncated while reading float_params");

    const OpInfo* info = find_op(ins.opcode);
    if (!info) return fail(at + ": unknown opcode " + std::to_string(ins.opcode));
    const std::string opat = at + " (" + info->name + ")";
    if (ins.out < 0 || ins.out >= n_regs)
      return fail(opat + ": output register " + std::to_string(ins.out) + " out of range");
    const RegisterSpec& out = prog->registers[ins.out];
    for (int32_t a : ins.args) {
      if (a < 0 || a >= n_regs)
        return fail(opat + ": argument register " + std::to_string(a) + " out of range");
      if (a == ins.out)
        return fail(opat + ": output register " + std::to_string(a) + " is also an argument");
      if (last_writer[a] < 0)
        return fail(opat + ": argument register " + std::to_string(a) +
                    " is not written by an earlier instruction");
      if (!role_contains(out.role, prog->registers[a].role))
        return fail(opat + ": a " + role_name(out.role) + " instruction cannot read " +
                    role_name(prog->registers[a].role) + " register " + std::to_string(a));
    }

    auto expect = [&](size_t n_args, size_t n_int, size_t n_float) {
      if (ins.args.size() != n_args)
        return fail(opat + ": expected " + std::to_string(n_args) + " arguments, got " +
                    std::to_string(ins.args.size()));
      if (ins.int_params.size() != n_int)
        return fail(opat + ": expected " + std::to_string(n_int) + " int params, got " +
                    std::to_string(ins.int_params.size()));
      if (n_float != size_t(-1) && ins.float_params.size() != n_float)
        return fail(opat + ": expected " + std::to_string(n_float) + " float params, got " +
                    std::to_string(ins.float_params.size()));
      return true;
    };
    auto expect_dim = [&](int64_t dim) {
      if (out.dim != dim)
        return fail(opat + ": output register " + std::to_string(ins.out) + " has dim " +
                    std::to_string(out.dim) + ", the op gives dim " + std::to_string(dim));
      return true;
    };
    auto arg_dim = [&](size_t a) { return prog->registers[ins.args[a]].dim; };

    switch (info->kind) {
      case OpKind::kUnaryElementwise:
        if (!expect(1, 0, 0) || !expect_dim(arg_dim(0))) return false;
        break;
      case OpKind::kBinaryElementwise: {
        if (!expect(2, 0, 0)) return false;
        int32_t da = arg_dim(0), db = arg_dim(1);
        if (da != db && da != 1 && db != 1)
          return fail(opat + ": argument dims " + std::to_string(da) + " and " +
                      std::to_string(db) + " do not broadcast (same dim or 1)");
        if (!expect_dim(da > db ? da : db)) return false;
        break;
      }
      case OpKind::kTernaryElementwise: {
        if (!expect(3, 0, 0)) return false;
        int32_t dmax = 1;
        for (size_t a = 0; a < 3; ++a) dmax = arg_dim(a) > dmax ? arg_dim(a) : dmax;
        for (size_t a = 0; a < 3; ++a)
          if (arg_dim(a) != 1 && arg_dim(a) != dmax)
            return fail(opat + ": argument dims " + std::to_string(arg_dim(0)) + ", " +
                        std::to_string(arg_dim(1)) + " and " + std::to_string(arg_dim(2)) +
                        " do not broadcast (same dim or 1)");
        if (!expect_dim(dmax)) return false;
        break;
      }
      case OpKind::kSpecial:
        switch (static_cast<Op>(ins.opcode)) {
          case Op::Var: {
            if (!expect(0, 1, 0)) return false;
            int32_t idx = ins.int_params[0];
            if (idx < 0 || static_cast<size_t>(idx) >= prog->inputs.size())
              return fail(opat + ": input index " + std::to_string(idx) + " out of range");
            const InputSpec& in = prog->inputs[idx];
            if (out.role != in.role)
              return fail(opat + ": input " + std::to_string(idx) + " has role " +
                          role_name(in.role) + " but output register " + std::to_string(ins.out) +
                          " has role " + role_name(out.role));
            if (!expect_dim(in.dim)) return false;
            break;
          }
          case Op::Const:
            if (!expect(0, 0, size_t(-1))) return false;
            if (out.role != kParam)
              return fail(opat + ": output register must have role param");
            if (!expect_dim(static_cast<int64_t>(ins.float_params.size()))) return false;
            break;
          case Op::Pow:
            if (!expect(1, 1, 0) || !expect_dim(arg_dim(0))) return false;
            break;
          case Op::Sum:
          case Op::SqNorm2:
            if (!expect(1, 0, 0) || !expect_dim(1)) return false;
            break;
          case Op::Scalprod:
          case Op::SqDist:
            if (!expect(2, 0, 0)) return false;
            if (arg_dim(0) != arg_dim(1))
              return fail(opat + ": argument dims " + std::to_string(arg_dim(0)) + " and " +
                          std::to_string(arg_dim(1)) + " differ");
            if (!expect_dim(1)) return false;
            break;
          case Op::Round:
            if (!expect(1, 1, 0) || !expect_dim(arg_dim(0))) return false;
            if (ins.int_params[0] < -300 || ins.int_params[0] > 300)
              return fail(opat + ": decimals " + std::to_string(ins.int_params[0]) +
                          " outside [-300, 300]");
            break;
          case Op::Min:
          case Op::Max:
          case Op::ArgMin:
          case Op::ArgMax:
            if (!expect(1, 0, 0) || !expect_dim(1)) return false;
            break;
          case Op::OneHot:
            if (!expect(1, 1, 0)) return false;
            if (arg_dim(0) != 1)
              return fail(opat + ": argument dim " + std::to_string(arg_dim(0)) + ", expected 1");
            if (!expect_dim(ins.int_params[0])) return false;
            break;
          case Op::Extract: {
            if (!expect(1, 2, 0)) return false;
            const int64_t i = ins.int_params[0], d = ins.int_params[1];
            if (i < 0 || d < 1 || i + d > arg_dim(0))
              return fail(opat + ": range [" + std::to_string(i) + ", " + std::to_string(i + d) +
                          ") outside the argument's dim " + std::to_string(arg_dim(0)));
            if (!expect_dim(d)) return false;
            break;
          }
          case Op::ExtractT: {
            if (!expect(1, 2, 0)) return false;
            const int64_t i = ins.int_params[0], d = ins.int_params[1];
            if (i < 0 || i + arg_dim(0) > d)
              return fail(opat + ": argument of dim " + std::to_string(arg_dim(0)) +
                          " placed at " + std::to_string(i) + " does not fit in dim " +
                          std::to_string(d));
            if (!expect_dim(d)) return false;
            break;
          }
          case Op::Concat:
            if (!expect(2, 0, 0) || !expect_dim(int64_t(arg_dim(0)) + arg_dim(1))) return false;
            break;
          case Op::TensorDot: {
            if (!expect(2, ins.int_params.size(), 0)) return false;
            TensorDotSpec spec;
            std::string td_error;
            if (!spec.parse(ins.int_params, arg_dim(0), arg_dim(1), &td_error))
              return fail(opat + ": " + td_error);
            if (!expect_dim(spec.out_dim)) return false;
            // One budget for the whole program, so that a short crafted program cannot ask
            // for many large tables (each term costs 12 bytes, and as much again to sort).
            total_terms += spec.n_terms;
            if (total_terms > TensorDotSpec::kMaxTerms)
              return fail(opat + ": the program's TensorDots have " +
                          std::to_string(total_terms) + " terms in all (limit " +
                          std::to_string(TensorDotSpec::kMaxTerms) + ")");
            prog->term_tables[k] = spec.sorted_term_table();
            break;
          }
          default:
            return fail(opat + ": op has no validation rule (internal error)");
        }
        break;
    }
    seen_writer[k].resize(ins.args.size());
    for (size_t a = 0; a < ins.args.size(); ++a) seen_writer[k][a] = last_writer[ins.args[a]];
    last_writer[ins.out] = k;
  }

  if (!read_count(&n, "n_results", 4)) return false;
  prog->results.resize(n);
  prog->result_dims.resize(n);
  for (int32_t k = 0; k < n; ++k) {
    int32_t r;
    if (!read_i32(&r, "result_registers")) return false;
    if (r < 0 || r >= n_regs)
      return fail("result register " + std::to_string(r) + " out of range");
    if (last_writer[r] < 0)
      return fail("result register " + std::to_string(r) + " is never written");
    prog->results[k] = r;
    prog->result_dims[k] = prog->registers[r].dim;
  }
  if (rd.remaining() != 0)
    return fail(std::to_string(rd.remaining()) + " trailing bytes after the results");

  // The executors run instructions hoisted by role (all param ones, then outer, inner, pair).
  // Registers may be reused, so check every read still sees the write it sees in program order.
  {
    std::vector<int32_t> writer(n_regs, -1);
    for (int32_t role = kParam; role <= kPair; ++role) {
      for (int32_t k = 0; k < static_cast<int32_t>(prog->instructions.size()); ++k) {
        const Instruction& ins = prog->instructions[k];
        if (prog->registers[ins.out].role != role) continue;
        for (size_t a = 0; a < ins.args.size(); ++a)
          if (writer[ins.args[a]] != seen_writer[k][a])
            return fail("instruction " + std::to_string(k) + " reads register " +
                        std::to_string(ins.args[a]) +
                        " after it was overwritten by an instruction of another role; register "
                        "reuse must be consistent with hoisting by role");
        writer[ins.out] = k;
      }
    }
  }

  std::string red_error;
  bool red_ok = false;
  bool known = dispatch_reduction(prog->reduction, [&](auto tag) {
    using R = typename decltype(tag)::type;
    red_ok = R::check(prog->reduction_params, prog->result_dims, &red_error);
  });
  if (!known) return fail("unknown reduction code " + std::to_string(prog->reduction));
  if (!red_ok) return fail(red_error);
  return true;
}

}  // namespace jaxkeops
