// Fixed-width result tables in the style of nccl-tests: '#' header lines (names, then units),
// then one line per row, columns right-aligned unless marked left. Used by verify.
#pragma once
#include <string>
#include <vector>

namespace longattn::cli {

struct Column {
  std::string name;
  std::string unit;
  int width = 10;
  bool left = false;
};

class Table {
 public:
  explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}
  std::string header() const;  // two lines, each ending in '\n'
  std::string row(const std::vector<std::string>& cells) const;

 private:
  std::string line(char lead, const std::vector<std::string>& cells) const;
  std::vector<Column> columns_;
};

// "1.23e-05"-style scientific text with `digits` significant digits; "-" for negative values.
std::string sci(double v, int digits = 2);
// Fixed-point text.
std::string fixed(double v, int decimals);

}  // namespace longattn::cli
