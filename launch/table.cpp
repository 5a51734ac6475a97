// Fixed-width result tables (see table.hpp).
#include "launch/table.hpp"

#include <cmath>
#include <iomanip>
#include <sstream>

namespace longattn::cli {

std::string Table::line(char lead, const std::vector<std::string>& cells) const {
  std::ostringstream os;
  os << lead;
  for (size_t c = 0; c < columns_.size(); ++c) {
    const Column& col = columns_[c];
    const std::string& text = c < cells.size() ? cells[c] : std::string();
    os << ' ' << (col.left ? std::left : std::right) << std::setw(col.width) << text;
  }
  std::string s = os.str();
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s + "\n";
}

std::string Table::header() const {
  std::vector<std::string> names, units;
  for (const auto& c : columns_) {
    names.push_back(c.name);
    units.push_back(c.unit);
  }
  return line('#', names) + line('#', units);
}

std::string Table::row(const std::vector<std::string>& cells) const { return line(' ', cells); }

std::string sci(double v, int digits) {
  if (v < 0) return "-";
  if (std::isinf(v)) return "inf";
  if (std::isnan(v)) return "nan";
  std::ostringstream os;
  os << std::scientific << std::setprecision(digits - 1) << v;
  return os.str();
}

std::string fixed(double v, int decimals) {
  if (v < 0) return "-";
  std::ostringstream os;
  os << std::fixed << std::setprecision(decimals) << v;
  return os.str();
}

}  // namespace longattn::cli
