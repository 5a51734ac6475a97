// NumPy .npy reading and writing (see npy.hpp for the formats and the bf16 convention).
// The header is a Python dict literal; a small parser reads the subset NumPy writes.
#include "runtime/npy.hpp"

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "runtime/error.hpp"

namespace longattn {

static_assert(std::endian::native == std::endian::little,
              "the .npy reader maps little-endian data directly onto host memory");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;  // NumPy pads the header so the data starts 64-byte aligned
constexpr const char* kBf16Field = "bf16";

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": not a readable .npy file: " + what);
}

// A value of the Python literal subset found in .npy headers.
struct PyValue {
  enum class Kind { Str, Int, Bool, None, Tuple, List, Dict } kind = Kind::None;
  std::string str;
  int64_t num = 0;
  bool flag = false;
  std::vector<PyValue> items;                        // Tuple, List
  std::vector<std::pair<std::string, PyValue>> dict;  // Dict (string keys)
};

class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  PyValue parse_all() {
    PyValue v = value();
    skip_ws();
    if (pos_ != s_.size()) error("unexpected text after the header dict");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) {
    fail(path_, "malformed header (" + what + " at character " + std::to_string(pos_) +
                    "): " + s_);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' ||
                                s_[pos_] == '\r'))
      ++pos_;
  }
  bool eat(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) error(std::string("expected '") + c + "'");
  }
  bool word(const char* w) {
    const size_t n = std::strlen(w);
    if (s_.compare(pos_, n, w) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  // Items up to `close`, comma separated, trailing comma allowed.
  std::vector<PyValue> sequence(char close, bool* trailing_comma) {
    std::vector<PyValue> out;
    *trailing_comma = false;
    while (!eat(close)) {
      out.push_back(value());
      if (eat(',')) {
        *trailing_comma = true;
        continue;
      }
      *trailing_comma = false;
      expect(close);
      break;
    }
    return out;
  }
  PyValue value() {
    skip_ws();
    if (pos_ >= s_.size()) error("unexpected end");
    PyValue v;
    const char c = s_[pos_];
    if (c == '\'' || c == '"') {
      ++pos_;
      const size_t end = s_.find(c, pos_);
      if (end == std::string::npos) error("unterminated string");
      v.kind = PyValue::Kind::Str;
      v.str = s_.substr(pos_, end - pos_);
      pos_ = end + 1;
    } else if (c == '(' || c == '[') {
      ++pos_;
      bool trailing = false;
      v.kind = c == '(' ? PyValue::Kind::Tuple : PyValue::Kind::List;
      v.items = sequence(c == '(' ? ')' : ']', &trailing);
    } else if (c == '{') {
      ++pos_;
      v.kind = PyValue::Kind::Dict;
      while (!eat('}')) {
        PyValue key = value();
        if (key.kind != PyValue::Kind::Str) error("dict key is not a string");
        expect(':');
        v.dict.emplace_back(key.str, value());
        if (!eat(',')) {
          expect('}');
          break;
        }
      }
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t used = 0;
      try {
        v.num = std::stoll(s_.substr(pos_), &used);
      } catch (const std::exception&) {
        error("bad integer");
      }
      pos_ += used;
      if (pos_ < s_.size() && s_[pos_] == 'L') ++pos_;  // Python 2 long suffix
      v.kind = PyValue::Kind::Int;
    } else if (word("True")) {
      v.kind = PyValue::Kind::Bool;
      v.flag = true;
    } else if (word("False")) {
      v.kind = PyValue::Kind::Bool;
    } else if (word("None")) {
      v.kind = PyValue::Kind::None;
    } else {
      error("unexpected character");
    }
    return v;
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

DType descr_to_dtype(const PyValue& d, const std::string& path) {
  if (d.kind == PyValue::Kind::List) {
    // The bf16 convention: exactly one field named 'bf16' of type '<u2'.
    if (d.items.size() == 1 && d.items[0].kind == PyValue::Kind::Tuple &&
        d.items[0].items.size() == 2 && d.items[0].items[0].kind == PyValue::Kind::Str &&
        d.items[0].items[0].str == kBf16Field && d.items[0].items[1].kind == PyValue::Kind::Str &&
        d.items[0].items[1].str == "<u2")
      return DType::BF16;
    fail(path, "structured descr is not longattn's bf16 convention [('bf16', '<u2')]");
  }
  if (d.kind != PyValue::Kind::Str) fail(path, "descr is neither a string nor a field list");
  const std::string& s = d.str;
  if (s == "<f8") return DType::F64;
  if (s == "<f4") return DType::F32;
  if (s == "<f2") return DType::F16;
  if (s == "<V2" || s == "|V2") return DType::BF16;  // ml_dtypes' bfloat16 saved by NumPy
  if (s.size() == 3 && s[0] == '>' && s[1] == 'f')
    fail(path, "descr '" + s + "' is big-endian; only little-endian data is supported "
               "(convert with a.astype(a.dtype.newbyteorder('<')))");
  if (s == "<u2" || s == "|u2")
    fail(path, "descr '" + s + "' is 16-bit integers; bf16 must use the descr "
               "[('bf16', '<u2')] (see the README)");
  fail(path, "descr '" + s + "' is not supported (use '<f8', '<f4', '<f2' or bf16 as "
             "[('bf16', '<u2')])");
}

const PyValue* dict_get(const PyValue& d, const std::string& key) {
  for (const auto& [k, v] : d.dict)
    if (k == key) return &v;
  return nullptr;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '(';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ',';
  os << ')';
  return os.str();
}

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

}  // namespace

int64_t NpyArray::numel() const { return product(shape); }

std::string npy_descr(DType t) {
  switch (t) {
    case DType::F64: return "'<f8'";
    case DType::F32: return "'<f4'";
    case DType::F16: return "'<f2'";
    case DType::BF16: return std::string("[('") + kBf16Field + "', '<u2')]";
  }
  return "";
}

namespace {

// Reads and checks the preamble and header; leaves `in` at the first data byte.
NpyInfo read_header(std::ifstream& in, const std::string& path) {
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0, std::ios::beg);

  char pre[12] = {};
  if (file_size < 10 || !in.read(pre, 10)) fail(path, "file is shorter than the .npy preamble");
  if (std::memcmp(pre, kMagic, kMagicLen) != 0)
    fail(path, "missing the magic string \\x93NUMPY at the start");
  const int major = static_cast<unsigned char>(pre[6]);
  const int minor = static_cast<unsigned char>(pre[7]);
  uint64_t header_len = 0;
  size_t preamble = 10;
  if (major == 1) {
    header_len = static_cast<unsigned char>(pre[8]) | (static_cast<unsigned char>(pre[9]) << 8);
  } else if (major == 2 || major == 3) {
    if (!in.read(pre + 10, 2)) fail(path, "file ends inside the header length");
    preamble = 12;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(pre[8 + i]);
  } else {
    fail(path, "format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " is not supported (1.0, 2.0 and 3.0 are)");
  }
  if (preamble + header_len > file_size)
    fail(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(file_size) + " bytes)");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  while (!header.empty() && (header.back() == '\n' || header.back() == ' ' ||
                             header.back() == '\0'))
    header.pop_back();

  const PyValue dict = HeaderParser(header, path).parse_all();
  if (dict.kind != PyValue::Kind::Dict) fail(path, "header is not a dict: " + header);
  const PyValue* descr = dict_get(dict, "descr");
  const PyValue* fortran = dict_get(dict, "fortran_order");
  const PyValue* shape = dict_get(dict, "shape");
  if (!descr || !fortran || !shape)
    fail(path, "header lacks one of the keys 'descr', 'fortran_order', 'shape': " + header);

  NpyInfo a;
  a.dtype = descr_to_dtype(*descr, path);
  if (fortran->kind != PyValue::Kind::Bool) fail(path, "fortran_order is not True or False");
  if (shape->kind != PyValue::Kind::Tuple) fail(path, "shape is not a tuple: " + header);
  for (const auto& d : shape->items) {
    if (d.kind != PyValue::Kind::Int || d.num < 0)
      fail(path, "shape holds something other than non-negative integers: " + header);
    a.shape.push_back(d.num);
  }
  if (fortran->flag && a.shape.size() > 1)
    fail(path, "array is in Fortran order; only C order is supported "
               "(save np.ascontiguousarray(a))");

  const uint64_t bytes = static_cast<uint64_t>(product(a.shape)) * dtype_size(a.dtype);
  const uint64_t available = file_size - preamble - header_len;
  if (available < bytes)
    fail(path, "data is truncated: shape " + shape_string(a.shape) + " needs " +
                   std::to_string(bytes) + " bytes, the file holds " + std::to_string(available));
  return a;
}

// Maps an array's shape onto [B, N, H, D] by layout; throws naming the file.
std::array<int64_t, 4> tensor_dims(const std::vector<int64_t>& s, NpyLayout layout,
                                   const std::string& path) {
  int64_t B = 0, N = 0, H = 0, D = 0;
  switch (layout) {
    case NpyLayout::BNHD:
      if (s.size() != 4) fail(path, "shape " + shape_string(s) + " is not 4-D [B, N, H, D]");
      B = s[0], N = s[1], H = s[2], D = s[3];
      break;
    case NpyLayout::BNH:
      if (s.size() == 3 || (s.size() == 4 && s[3] == 1)) {
        B = s[0], N = s[1], H = s[2], D = 1;
      } else {
        fail(path, "shape " + shape_string(s) + " is not 3-D [B, N, H] (or [B, N, H, 1])");
      }
      break;
    case NpyLayout::BNE:
      if (s.size() != 3) fail(path, "shape " + shape_string(s) + " is not 3-D [B, N, E]");
      B = s[0], N = s[1], H = 1, D = s[2];
      break;
  }
  if (B <= 0 || N <= 0 || H <= 0 || D <= 0)
    fail(path, "shape " + shape_string(s) + " has an empty axis");
  return {B, N, H, D};
}

}  // namespace

NpyInfo read_npy_info(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return read_header(in, path);
}

NpyArray read_npy_array(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const NpyInfo info = read_header(in, path);
  NpyArray a;
  a.dtype = info.dtype;
  a.shape = info.shape;
  a.data.resize(static_cast<size_t>(a.numel()) * dtype_size(a.dtype));
  if (!a.data.empty() &&
      !in.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(a.data.size())))
    fail(path, "read error in the data");
  return a;
}

std::array<int64_t, 4> npy_tensor_shape(const std::string& path, NpyLayout layout) {
  return tensor_dims(read_npy_info(path).shape, layout, path);
}

void write_npy_array(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
                     const void* data) {
  for (int64_t s : shape)
    LONGATTN_CHECK_ARG(s >= 0, "shape", shape_string(shape), "axes must be non-negative");
  std::string header = "{'descr': " + npy_descr(dtype) + ", 'fortran_order': False, 'shape': " +
                       shape_string(shape) + ", }";
  // Preamble + header + '\n' padded with spaces to a multiple of kAlign.
  size_t preamble = 10;
  int major = 1;
  auto padded = [&](size_t pre) { return (pre + header.size() + 1 + kAlign - 1) / kAlign * kAlign - pre; };
  size_t header_len = padded(preamble);
  if (header_len > 0xffff) {
    major = 2;
    preamble = 12;
    header_len = padded(preamble);
  }
  header.append(header_len - header.size() - 1, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
  char pre[12];
  std::memcpy(pre, kMagic, kMagicLen);
  pre[6] = static_cast<char>(major);
  pre[7] = 0;
  for (size_t i = 0; i < preamble - 8; ++i) pre[8 + i] = static_cast<char>((header_len >> (8 * i)) & 0xff);
  out.write(pre, static_cast<std::streamsize>(preamble));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  const auto bytes = static_cast<std::streamsize>(product(shape) * static_cast<int64_t>(dtype_size(dtype)));
  if (bytes) out.write(static_cast<const char*>(data), bytes);
  out.flush();
  if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
}

Tensor read_npy(const std::string& path, NpyLayout layout) {
  NpyArray a = read_npy_array(path);
  const auto [B, N, H, D] = tensor_dims(a.shape, layout, path);
  Tensor t(a.dtype, B, N, H, D);
  LONGATTN_ASSERT(t.bytes() == a.data.size(), "tensor and array sizes agree");
  std::memcpy(t.data(), a.data.data(), a.data.size());
  return t;
}

void write_npy(const std::string& path, const TensorView& t, NpyLayout layout) {
  LONGATTN_CHECK_ARG(t.device == DeviceKind::Cpu, "tensor", t.shape_string(),
                     "must be in host memory to be written to " + path);
  std::vector<int64_t> shape;
  switch (layout) {
    case NpyLayout::BNHD: shape = {t.B, t.N, t.H, t.D}; break;
    case NpyLayout::BNH:
      LONGATTN_CHECK_ARG(t.D == 1, "tensor", t.shape_string(), "[B, N, H] output needs D == 1");
      shape = {t.B, t.N, t.H};
      break;
    case NpyLayout::BNE:
      LONGATTN_CHECK_ARG(t.H == 1, "tensor", t.shape_string(), "[B, N, E] output needs H == 1");
      shape = {t.B, t.N, t.D};
      break;
  }
  if (t.is_contiguous()) {
    write_npy_array(path, t.dtype, shape, t.data);
    return;
  }
  Tensor c(t.dtype, t.B, t.N, t.H, t.D);
  c.copy_from(t);
  write_npy_array(path, t.dtype, shape, c.data());
}

}  // namespace longattn
