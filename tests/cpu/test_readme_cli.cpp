// Keeps README.md's CLI reference in sync with `longattn --help`: every subcommand the program
// lists and every long option of each subcommand's --help must appear in the README.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  pclose(p);
  return out;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::set<std::string> long_options(const std::string& help) {
  std::set<std::string> opts;
  const std::regex re("--[a-z][a-z0-9-]*");
  for (auto it = std::sregex_iterator(help.begin(), help.end(), re); it != std::sregex_iterator();
       ++it)
    if (it->str() != "--help") opts.insert(it->str());
  return opts;
}

// Subcommands: the indented first words of the "commands" part of `longattn --help`.
std::set<std::string> subcommands(const std::string& help) {
  std::set<std::string> cmds;
  const std::regex re("^  ([a-z]+)  ", std::regex::multiline);
  for (auto it = std::sregex_iterator(help.begin(), help.end(), re); it != std::sregex_iterator();
       ++it)
    cmds.insert((*it)[1].str());
  return cmds;
}

TEST(ReadmeCli, EverySubcommandAndOptionIsDocumented) {
#if defined(LONGATTN_CLI_PATH) && defined(LONGATTN_SOURCE_DIR)
  const fs::path cli = LONGATTN_CLI_PATH;
  if (!fs::exists(cli)) GTEST_SKIP() << "longattn binary not built";
  const std::string readme = read_file(fs::path(LONGATTN_SOURCE_DIR) / "README.md");
  ASSERT_FALSE(readme.empty());
  const auto cmds = subcommands(run_capture(cli.string() + " --help"));
  ASSERT_GE(cmds.size(), 3u) << "could not read the subcommands of longattn --help";
  for (const auto& c : cmds) {
    EXPECT_NE(readme.find("  " + c + "  "), std::string::npos)
        << "README's command list lacks `" << c << "`";
    const auto opts = long_options(run_capture(cli.string() + " " + c + " --help"));
    EXPECT_FALSE(opts.empty()) << c;
    for (const auto& o : opts)
      EXPECT_NE(readme.find("`" + o), std::string::npos)
          << "README does not document `" << c << " " << o << "` (write it as `" << o << "...`)";
  }
#else
  GTEST_SKIP() << "built without the CLI path";
#endif
}

}  // namespace
