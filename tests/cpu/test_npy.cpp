// .npy reading and writing: exact round trips for every dtype and odd shapes, the on-disk
// format NumPy expects (magic, version, descr, 64-byte alignment), and clear errors for bad files.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "runtime/error.hpp"
#include "runtime/npy.hpp"

namespace longattn {
namespace {

namespace fs = std::filesystem;

class Npy : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "longattn_npy_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // A hand-made file: preamble of the given version, the header text as is, then the data.
  void write_raw(const std::string& p, int major, const std::string& header,
                 const std::string& data) const {
    std::ofstream out(p, std::ios::binary);
    out.write("\x93NUMPY", 6);
    out.put(static_cast<char>(major));
    out.put(0);
    const size_t n = header.size();
    out.put(static_cast<char>(n & 0xff));
    out.put(static_cast<char>((n >> 8) & 0xff));
    if (major >= 2) {
      out.put(static_cast<char>((n >> 16) & 0xff));
      out.put(static_cast<char>((n >> 24) & 0xff));
    }
    out << header << data;
  }
  // The error message for reading `p`, which must mention the file and `fragment`.
  static void expect_read_error(const std::string& p, const std::string& fragment,
                                NpyLayout layout = NpyLayout::BNHD) {
    try {
      read_npy(p, layout);
      ADD_FAILURE() << "reading " << p << " did not fail";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p), std::string::npos) << msg;
      EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    }
  }

  fs::path dir_;
};

struct Dims {
  int64_t B, N, H, D;
};

TEST_F(Npy, RoundTripIsBitExactForEveryDtypeAndOddShapes) {
  const Dims shapes[] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {3, 17, 1, 13}, {1, 129, 2, 3}};
  uint64_t seed = 100;
  for (DType dt : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
    for (const Dims& s : shapes) {
      Tensor t = Tensor::randn(dt, s.B, s.N, s.H, s.D, ++seed, 3.0);
      // Values that must survive bit for bit: infinities and a negative zero.
      t.set(0, 0, 0, 0, -0.0);
      if (t.numel() > 2) {
        t.set(s.B - 1, s.N - 1, s.H - 1, s.D - 1, std::numeric_limits<double>::infinity());
        t.set(0, s.N - 1, 0, 0, -std::numeric_limits<double>::infinity());
      }
      const std::string p = path(std::string("t_") + dtype_name(dt) + ".npy");
      write_npy(p, t.view());
      Tensor r = read_npy(p);
      EXPECT_EQ(r.dtype(), dt);
      EXPECT_EQ(r.shape(), t.shape());
      ASSERT_EQ(r.bytes(), t.bytes());
      EXPECT_EQ(std::memcmp(r.data(), t.data(), t.bytes()), 0)
          << dtype_name(dt) << " " << t.view().shape_string();
      EXPECT_TRUE(std::signbit(r.at(0, 0, 0, 0)));
    }
  }
}

TEST_F(Npy, FileLayoutIsWhatNumpyReads) {
  Tensor t = Tensor::randn(DType::F32, 2, 3, 4, 5, 7);
  const std::string p = path("layout.npy");
  write_npy(p, t.view());
  const std::string f = slurp(p);
  ASSERT_GT(f.size(), 10u);
  EXPECT_EQ(f.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(f[6], 1);
  EXPECT_EQ(f[7], 0);
  const size_t hlen = static_cast<unsigned char>(f[8]) | (static_cast<unsigned char>(f[9]) << 8);
  EXPECT_EQ((10 + hlen) % 64, 0u);
  const std::string header = f.substr(10, hlen);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos) << header;
  EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
  EXPECT_NE(header.find("'shape': (2, 3, 4, 5)"), std::string::npos) << header;
  EXPECT_EQ(f.size(), 10 + hlen + t.bytes());
  EXPECT_EQ(std::memcmp(f.data() + 10 + hlen, t.data(), t.bytes()), 0);

  write_npy(path("bf16.npy"), Tensor::randn(DType::BF16, 1, 2, 1, 3, 8).view());
  EXPECT_NE(slurp(path("bf16.npy")).find("'descr': [('bf16', '<u2')]"), std::string::npos);
  write_npy(path("f16.npy"), Tensor::randn(DType::F16, 1, 2, 1, 3, 8).view());
  EXPECT_NE(slurp(path("f16.npy")).find("'descr': '<f2'"), std::string::npos);
}

TEST_F(Npy, ThreeDimensionalLayouts) {
  // LSE [B, N, H] and multihead [B, N, E].
  Tensor lse = Tensor::randn(DType::F32, 2, 9, 3, 1, 5);
  write_npy(path("lse.npy"), lse.view(), NpyLayout::BNH);
  NpyArray a = read_npy_array(path("lse.npy"));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 9, 3}));
  Tensor r = read_npy(path("lse.npy"), NpyLayout::BNH);
  EXPECT_EQ(r.shape(), lse.shape());
  EXPECT_EQ(std::memcmp(r.data(), lse.data(), lse.bytes()), 0);

  Tensor x = Tensor::randn(DType::F64, 3, 5, 1, 11, 6);
  write_npy(path("x.npy"), x.view(), NpyLayout::BNE);
  EXPECT_EQ(read_npy_array(path("x.npy")).shape, (std::vector<int64_t>{3, 5, 11}));
  Tensor rx = read_npy(path("x.npy"), NpyLayout::BNE);
  EXPECT_EQ(rx.shape(), x.shape());
  EXPECT_EQ(std::memcmp(rx.data(), x.data(), x.bytes()), 0);

  // The header alone tells the shape and dtype.
  const NpyInfo info = read_npy_info(path("x.npy"));
  EXPECT_EQ(info.dtype, DType::F64);
  EXPECT_EQ(info.shape, (std::vector<int64_t>{3, 5, 11}));
  EXPECT_EQ(npy_tensor_shape(path("x.npy"), NpyLayout::BNE), (std::array<int64_t, 4>{3, 5, 1, 11}));
  EXPECT_THROW(npy_tensor_shape(path("x.npy"), NpyLayout::BNHD), Error);

  // A 4-D [B, N, H, 1] array is accepted as LSE; a 3-D array is not Q.
  write_npy(path("lse4.npy"), lse.view());
  EXPECT_EQ(read_npy(path("lse4.npy"), NpyLayout::BNH).shape(), lse.shape());
  expect_read_error(path("lse.npy"), "is not 4-D");
  EXPECT_THROW(write_npy(path("bad.npy"), x.view(), NpyLayout::BNH), InvalidArgument);
}

TEST_F(Npy, StridedViewsAreWrittenInCOrder) {
  Tensor t = Tensor::randn(DType::F64, 2, 12, 3, 4, 9);
  const TensorView sub = t.view().rows(1, 4, 3).heads(1, 2);  // rows 1, 4, 7, 10; heads 1..2
  write_npy(path("sub.npy"), sub);
  Tensor r = read_npy(path("sub.npy"));
  ASSERT_EQ(r.shape(), (std::array<int64_t, 4>{2, 4, 2, 4}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t d = 0; d < 4; ++d)
          EXPECT_EQ(r.at(b, n, h, d), t.at(b, 1 + 3 * n, 1 + h, d));
}

TEST_F(Npy, ReadsFormatTwoAndThreeAndWritesTwoForHugeHeaders) {
  const float vals[3] = {1.5f, -2.25f, 3.0f};
  const std::string data(reinterpret_cast<const char*>(vals), sizeof(vals));
  for (int major : {2, 3}) {
    const std::string p = path("v" + std::to_string(major) + ".npy");
    write_raw(p, major, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", data);
    NpyArray a = read_npy_array(p);
    EXPECT_EQ(a.shape, std::vector<int64_t>{3});
    ASSERT_EQ(a.data.size(), sizeof(vals));
    EXPECT_EQ(std::memcmp(a.data.data(), vals, sizeof(vals)), 0);
  }
  // NumPy with ml_dtypes writes bfloat16 as '<V2': read as bf16 bits.
  const uint16_t bits[2] = {0x3fc0, 0xc010};  // 1.5, -2.25
  write_raw(path("v2.npy"), 1, "{'descr': '<V2', 'fortran_order': False, 'shape': (1, 1, 1, 2), }\n",
            std::string(reinterpret_cast<const char*>(bits), sizeof(bits)));
  Tensor bf = read_npy(path("v2.npy"));
  EXPECT_EQ(bf.dtype(), DType::BF16);
  EXPECT_EQ(bf.at(0, 0, 0, 0), 1.5);
  EXPECT_EQ(bf.at(0, 0, 0, 1), -2.25);

  // 25000 axes of length 1 need a header longer than format 1.0's 65535 bytes.
  std::vector<int64_t> shape(25000, 1);
  const double one = 0.75;
  write_npy_array(path("huge.npy"), DType::F64, shape, &one);
  const std::string f = slurp(path("huge.npy"));
  EXPECT_EQ(f[6], 2);
  NpyArray a = read_npy_array(path("huge.npy"));
  EXPECT_EQ(a.shape.size(), shape.size());
  double back = 0;
  std::memcpy(&back, a.data.data(), 8);
  EXPECT_EQ(back, one);
}

TEST_F(Npy, BadFilesNameTheFileAndTheProblem) {
  const std::string four(4 * 4, '\x01');
  expect_read_error(path("missing.npy"), "cannot open");

  {
    std::ofstream(path("magic.npy"), std::ios::binary) << "NOTNUMPYATALL_xxxxxxxxxxxxxx";
  }
  expect_read_error(path("magic.npy"), "magic");
  {
    std::ofstream(path("short.npy"), std::ios::binary) << "\x93NU";
  }
  expect_read_error(path("short.npy"), "shorter than");

  write_raw(path("ver.npy"), 9, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n", four);
  expect_read_error(path("ver.npy"), "version 9.0");

  write_raw(path("trunc.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2, 2), }\n", four);
  expect_read_error(path("trunc.npy"), "truncated");

  write_raw(path("int.npy"), 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1, 1, 4), }\n", four);
  expect_read_error(path("int.npy"), "'<i4' is not supported");

  write_raw(path("be.npy"), 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1, 1, 4), }\n", four);
  expect_read_error(path("be.npy"), "big-endian");

  write_raw(path("u2.npy"), 1, "{'descr': '<u2', 'fortran_order': False, 'shape': (1, 1, 2, 4), }\n", four);
  expect_read_error(path("u2.npy"), "16-bit integers");

  write_raw(path("fort.npy"), 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1, 2, 2), }\n", four);
  expect_read_error(path("fort.npy"), "Fortran order");

  write_raw(path("field.npy"), 1, "{'descr': [('x', '<u2')], 'fortran_order': False, 'shape': (1, 1, 2, 4), }\n", four);
  expect_read_error(path("field.npy"), "bf16 convention");

  write_raw(path("garbled.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 4}\n", four);
  expect_read_error(path("garbled.npy"), "malformed header");

  write_raw(path("nokey.npy"), 1, "{'descr': '<f4', 'shape': (1, 1, 1, 4), }\n", four);
  expect_read_error(path("nokey.npy"), "lacks one of the keys");

  write_raw(path("hlen.npy"), 1, std::string(40, ' '), "");
  {
    // Claim a header far longer than the file.
    std::fstream f(path("hlen.npy"), std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(8);
    f.put('\xff');
    f.put('\x7f');
  }
  expect_read_error(path("hlen.npy"), "runs past the end");

  write_raw(path("empty.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 0, 1, 4), }\n", "");
  expect_read_error(path("empty.npy"), "empty axis");
}

}  // namespace
}  // namespace longattn
