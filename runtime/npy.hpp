// NumPy .npy files (format 1.0, 2.0 and 3.0; little-endian; C order) for longattn tensors.
// Used by `longattn run` for Q/K/V/dO inputs and O/LSE/gradient outputs.
//
// Element types: fp64 '<f8', fp32 '<f4', fp16 '<f2'. NumPy has no bfloat16, so bf16 arrays are
// written as a one-field structured array whose descr is [('bf16', '<u2')]: NumPy loads it
// (np.load(f)['bf16'] gives the raw bit patterns as uint16; view them as ml_dtypes.bfloat16, or
// shift left by 16 into uint32 and view as float32), and the round trip through longattn is
// exact. Reading also accepts '<V2' / '|V2', which NumPy writes for ml_dtypes.bfloat16 arrays. A
// plain '<u2' array is not read as bf16 (it could be any 16-bit integer data).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace longattn {

// How the axes of an array map onto longattn's [B, N, H, D] tensors.
enum class NpyLayout {
  BNHD,  // 4-D [B, N, H, D]: Q, K, V, O, dO, gradients
  BNH,   // 3-D [B, N, H]: log-sum-exp (D = 1); a 4-D [B, N, H, 1] array is also read
  BNE,   // 3-D [B, N, E]: multihead inputs and outputs, held as [B, N, 1, E]
};

// What a file's header says.
struct NpyInfo {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

// An array of any rank as stored in a file.
struct NpyArray {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;  // C order, little-endian, dtype_size(dtype) bytes per element
  int64_t numel() const;
};

// The descr string longattn writes for a dtype ("<f8", "<f4", "<f2", "[('bf16', '<u2')]").
std::string npy_descr(DType t);

// Reads and checks only the header (and that the file is long enough for the data).
NpyInfo read_npy_info(const std::string& path);
// The [B, N, H, D] a file would be read as with `layout`, from its header alone.
std::array<int64_t, 4> npy_tensor_shape(const std::string& path, NpyLayout layout = NpyLayout::BNHD);

// Reads any-rank array; throws Error naming the file and what is wrong (missing file, bad magic,
// unsupported version or descr, big-endian data, Fortran order, malformed header, short data).
NpyArray read_npy_array(const std::string& path);
// Writes an array (format 1.0, or 2.0 when the header needs it). shape's product must match.
void write_npy_array(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
                     const void* data);

// Reads a file into a contiguous host tensor, mapping its axes by `layout` (rank is checked).
Tensor read_npy(const std::string& path, NpyLayout layout = NpyLayout::BNHD);
// Writes a host view (any strides) with the axes `layout` names: BNH needs D == 1, BNE H == 1.
void write_npy(const std::string& path, const TensorView& t, NpyLayout layout = NpyLayout::BNHD);

}  // namespace longattn
