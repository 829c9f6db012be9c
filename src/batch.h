// Batch dimensions of a reduction call (KeOps batch dims, and what jax.vmap folds into them).
//
// The output is shaped (*batch, n_outer, ...). Every operand has the same number of leading batch
// dims, each equal to the output's or 1 (broadcast: the same data serves every index, never
// copied). The executors run one problem per flat batch index, at the offsets computed here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jaxkeops {

class BatchLayout {
 public:
  // `batch`: the output's leading dims. Operands are added in order with their full dims and the
  // number of trailing (non-batch) dims; returns false with *error set when they do not fit.
  explicit BatchLayout(std::vector<int64_t> batch) : batch_(std::move(batch)) {
    count_ = 1;
    for (int64_t b : batch_) count_ *= b;
  }

  bool add_operand(const int64_t* dims, size_t rank, size_t base_rank, std::string* error) {
    const size_t nb = batch_.size();
    if (rank != nb + base_rank) {
      *error = "has " + std::to_string(rank) + " dims, expected " + std::to_string(nb) +
               " batch dims then " + std::to_string(base_rank);
      return false;
    }
    int64_t block = 1;  // elements of one problem's slice
    for (size_t k = nb; k < rank; ++k) block *= dims[k];
    std::vector<int64_t> strides(nb, 0);
    int64_t stride = block;
    for (size_t k = nb; k-- > 0;) {
      if (dims[k] != batch_[k] && dims[k] != 1) {
        *error = "has batch dim " + std::to_string(k) + " of size " + std::to_string(dims[k]) +
                 ", expected " + std::to_string(batch_[k]) + " or 1";
        return false;
      }
      strides[k] = dims[k] == 1 ? 0 : stride;
      stride *= dims[k];
    }
    strides_.push_back(std::move(strides));
    return true;
  }

  int64_t count() const { return count_; }
  size_t rank() const { return batch_.size(); }

  // Element offset of operand `k`'s slice for flat batch index `b` (row-major over the batch).
  int64_t offset(size_t k, int64_t b) const {
    int64_t off = 0;
    const std::vector<int64_t>& s = strides_[k];
    for (size_t d = batch_.size(); d-- > 0;) {
      const int64_t idx = b % batch_[d];
      b /= batch_[d];
      off += idx * s[d];
    }
    return off;
  }

 private:
  std::vector<int64_t> batch_;
  int64_t count_ = 1;
  std::vector<std::vector<int64_t>> strides_;
};

}  // namespace jaxkeops
