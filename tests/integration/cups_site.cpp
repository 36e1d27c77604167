#include "cups_site.hpp"

#include <grp.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include <cups/cups.h>

namespace dtu::testing {

namespace fs = std::filesystem;

namespace {

// How much of cupsd's error_log a failed test prints (LogLevel debug: the backend's own lines).
constexpr std::size_t kLogTailLines = 200;
// Timeout of one IPP request to the private scheduler.
constexpr int kIppTimeoutMs = 5000;

fs::path built(std::string_view relative) {
  const char* override_dir = std::getenv("DTU_BINARY_DIR");
  const fs::path root = (override_dir != nullptr && *override_dir != '\0') ? override_dir : DTU_BINARY_DIR;
  fs::path path = root / relative;
  if (::access(path.c_str(), X_OK) != 0) {
    throw std::runtime_error(path.string() + " is not built (cmake --build the tree first)");
  }
  return path;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string last_lines(const std::string& text, std::size_t n) {
  std::size_t pos = text.size();
  for (std::size_t seen = 0; pos > 0 && seen <= n;) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
    ++seen;
  }
  return text.substr(pos == 0 ? 0 : pos + 1);
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

gid_t lp_group() {
  const group* g = ::getgrnam("lp");
  if (g == nullptr)
    throw std::runtime_error("there is no group 'lp' (is the cups-daemon package installed?)");
  return g->gr_gid;
}

// One IPP connection to the scheduler's socket, closed on destruction.
class Ipp {
 public:
  explicit Ipp(const fs::path& socket)
      : http_(httpConnect2(socket.c_str(), 0, nullptr, AF_LOCAL, HTTP_ENCRYPTION_NEVER, 1, kIppTimeoutMs,
                           nullptr)) {}
  ~Ipp() {
    if (http_ != nullptr) httpClose(http_);
  }
  Ipp(const Ipp&) = delete;
  Ipp& operator=(const Ipp&) = delete;

  // Sends `request` (consumed); the response, or nullptr when there is none. The caller frees it.
  ipp_t* call(ipp_t* request) {
    if (http_ == nullptr) {
      ippDelete(request);
      return nullptr;
    }
    return cupsDoRequest(http_, request, "/");
  }

 private:
  http_t* http_;
};

// A request of operation `op` from us (its operation attributes come before any other group).
ipp_t* new_request(ipp_op_t op) {
  ipp_t* request = ippNewRequest(op);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_NAME, "requesting-user-name", nullptr, cupsUser());
  return request;
}

// Whether cupsd answers an IPP request on `socket`. Not `lpstat -r`: it exits 0 also when it
// prints "scheduler is not running", and a test's first lpinfo then found no cupsd listening.
bool answers_ipp(const fs::path& socket) {
  Ipp ipp(socket);
  ipp_t* response = ipp.call(new_request(IPP_OP_CUPS_GET_PRINTERS));
  if (response == nullptr) return false;
  ippDelete(response);
  return true;
}

std::string text_of(ipp_attribute_t* attr) {
  if (attr == nullptr) return {};
  std::string out;
  for (int i = 0; i < ippGetCount(attr); ++i) {
    if (!out.empty()) out += ',';
    if (ippGetValueTag(attr) == IPP_TAG_ENUM) {
      out += ippEnumString(ippGetName(attr), ippGetInteger(attr, i));
    } else {
      const char* s = ippGetString(attr, i, nullptr);
      out += s != nullptr ? s : "";
    }
  }
  return out;
}

}  // namespace

fs::path cups_backend_path() {
  return built("cups/backend/dtu");
}

fs::path dtu_print_path() {
  return built("services/dtu-print");
}

bool same_bytes(const std::string& got_hex, const std::string& expected, std::string* why) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const std::size_t got_size = got_hex.size() / 2;
  std::size_t i = 0;
  for (; i < got_size && i < expected.size(); ++i) {
    const auto byte = static_cast<unsigned char>(expected[i]);
    const char hi = static_cast<char>(std::tolower(static_cast<unsigned char>(got_hex[2 * i])));
    const char lo = static_cast<char>(std::tolower(static_cast<unsigned char>(got_hex[2 * i + 1])));
    if (hi != kDigits[byte >> 4] || lo != kDigits[byte & 0xf]) break;
  }
  const bool same = got_hex.size() % 2 == 0 && got_size == expected.size() && i == expected.size();
  if (!same && why != nullptr) {
    *why = "got " + std::to_string(got_size) + " bytes, expected " + std::to_string(expected.size()) +
           "; first difference at byte offset " + std::to_string(i);
  }
  return same;
}

void open_to_lp(const fs::path& dir) {
  fs::permissions(dir, fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec,
                  fs::perm_options::add);
}

CupsSite::CupsSite(Options options) : dir_("dtu-cups") {
  // cupsd's children (backend as lp) reach ServerBin, the spool and TempDir through this one.
  fs::permissions(dir_.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                   fs::perms::others_read | fs::perms::others_exec);
  write_config(options);
  cupsd_ = std::make_unique<Process>(
      std::vector<std::string>{"/usr/sbin/cupsd", "-f", "-c", (dir_ / "cupsd.conf").string(), "-s",
                               (dir_ / "cups-files.conf").string()},
      dir_.path(), Environment{}, "cupsd");
  const bool up = eventually(
      [&] {
        if (cupsd_->exit_status()) return false;
        return answers_ipp(socket());
      },
      kCupsDeadline, std::chrono::milliseconds(100));
  if (!up) {
    const auto status = cupsd_->exit_status();
    throw std::runtime_error("private cupsd did not come up (" +
                             (status ? "exited with " + std::to_string(*status) : std::string("no answer")) +
                             "); its error_log ends:\n" + last_lines(error_log(), kLogTailLines) +
                             "\nstderr:\n" + cupsd_->log());
  }
}

CupsSite::~CupsSite() {
  // cupsd buffers its log: stop it first (SIGTERM, then SIGKILL after Process::kStopGrace).
  cupsd_.reset();
  if (current_test_failed() || std::uncaught_exceptions() > 0) {
    flush_test_report();
    std::fprintf(stderr, "[cups_site] ---- cupsd error_log %s, last %zu lines:\n%s\n[cups_site] ---- end\n",
                 (dir_ / "log" / "error_log").c_str(), kLogTailLines,
                 last_lines(error_log(), kLogTailLines).c_str());
  }
}

void CupsSite::write_config(const Options& options) const {
  const fs::path d = dir_.path();
  for (const char* sub : {"root", "spool", "cache", "state", "tmp", "log", "bin", "bin/backend"}) {
    fs::create_directories(d / sub);
  }
  // TempDir: the backend (lp) may write its temporary files there, as in /var/spool/cups/tmp.
  if (::chown((d / "tmp").c_str(), 0, lp_group()) != 0) {
    throw std::system_error(errno, std::generic_category(), "chown " + (d / "tmp").string());
  }
  fs::permissions(d / "tmp", fs::perms::owner_all | fs::perms::group_all | fs::perms::sticky_bit);
  for (const char* sub : {"bin", "bin/backend"}) {
    fs::permissions(d / sub, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                 fs::perms::others_read | fs::perms::others_exec);
  }
  // ServerBin: the system's helpers (cups-deviced and cups-exec in daemon/, the filters a raw
  // queue still consults), and our backend alone in backend/ so `lpinfo -v` asks only it.
  for (const char* sub : {"daemon", "filter", "monitor", "notifier", "cgi-bin", "driver"}) {
    const fs::path system = fs::path("/usr/lib/cups") / sub;
    if (fs::exists(system)) fs::create_directory_symlink(system, d / "bin" / sub);
  }
  const fs::path backend = d / "bin" / "backend" / "dtu";
  fs::copy_file(cups_backend_path(), backend, fs::copy_options::overwrite_existing);
  // 0755 root: CUPS runs it as User lp (a 0700 one would run as root).
  fs::permissions(backend, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);

  std::string files;
  files += "ServerRoot " + (d / "root").string() + "\n";
  files += "RequestRoot " + (d / "spool").string() + "\n";
  files += "CacheDir " + (d / "cache").string() + "\n";
  files += "StateDir " + (d / "state").string() + "\n";
  files += "TempDir " + (d / "tmp").string() + "\n";
  files += "ServerBin " + (d / "bin").string() + "\n";
  files += "AccessLog " + (d / "log" / "access_log").string() + "\n";
  files += "ErrorLog " + (d / "log" / "error_log").string() + "\n";
  files += "PageLog " + (d / "log" / "page_log").string() + "\n";
  files += "Printcap " + (d / "printcap").string() + "\n";
  files += "User lp\nGroup lp\nSystemGroup root\nFileDevice No\n";
  // CUPS passes backends no other environment; CUPS 2.4 ignores SetEnv in cupsd.conf.
  files += "SetEnv DTUBROKER_SOCKET " + options.manager_socket.string() + "\n";
  write_text(d / "cups-files.conf", files);

  std::string conf;
  conf += "LogLevel debug\n";
  conf += "Listen " + socket().string() + "\n";
  if (!options.listen.empty()) conf += "Listen " + options.listen + "\n";
  conf += "Browsing No\nBrowseLocalProtocols none\nWebInterface No\nDefaultAuthType None\n";
  // Jobs stay listed once done, so tests can read their final state.
  conf += "PreserveJobHistory Yes\nMaxJobs 0\n";
  conf += "<Location />\n  Order allow,deny\n  Allow all\n</Location>\n";
  conf += "<Policy default>\n  <Limit All>\n    Order allow,deny\n    Allow all\n  </Limit>\n</Policy>\n";
  write_text(d / "cupsd.conf", conf);
}

std::string CupsSite::error_log() const {
  return read_text(dir_ / "log" / "error_log");
}

CommandResult CupsSite::run(std::vector<std::string> argv, std::chrono::milliseconds deadline) const {
  return run_command(std::move(argv), deadline, env());
}

std::optional<int> CupsSite::print(const std::string& queue, const fs::path& file, std::string* why) const {
  auto r = run({"lp", "-d", queue, file.string()});
  static const std::regex kRequestId(R"(request id is \S+-(\d+))");
  std::smatch m;
  if (r.exit_code == 0 && std::regex_search(r.out, m, kRequestId)) return std::stoi(m[1].str());
  if (why != nullptr) *why = "lp exited " + std::to_string(r.exit_code) + ": " + r.out + r.err;
  return std::nullopt;
}

CupsSite::Job CupsSite::job(int id) const {
  Ipp ipp(socket());
  ipp_t* request = new_request(IPP_OP_GET_JOB_ATTRIBUTES);
  const std::string uri = "ipp://localhost/jobs/" + std::to_string(id);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_URI, "job-uri", nullptr, uri.c_str());
  ipp_t* response = ipp.call(request);
  Job job{"unknown", ""};
  if (response == nullptr) return job;
  if (ipp_attribute_t* state = ippFindAttribute(response, "job-state", IPP_TAG_ENUM))
    job.state = text_of(state);
  job.reasons = text_of(ippFindAttribute(response, "job-state-reasons", IPP_TAG_KEYWORD));
  ippDelete(response);
  return job;
}

bool CupsSite::wait_job(int id, const std::string& state, std::chrono::milliseconds deadline,
                        Job* last) const {
  Job seen;
  bool ended_otherwise = false;
  const bool reached = eventually(
      [&] {
        seen = job(id);
        if (seen.state == state) return true;
        ended_otherwise = seen.state == "canceled" || seen.state == "aborted" || seen.state == "completed";
        return ended_otherwise;
      },
      deadline, std::chrono::milliseconds(100));
  if (last != nullptr) *last = seen;
  return reached && !ended_otherwise;
}

std::vector<pid_t> CupsSite::backend_pids() const {
  const fs::path backend = dir_ / "bin" / "backend" / "dtu";
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code gone;  // the process may exit while we look
    const fs::path exe = fs::read_symlink(entry.path() / "exe", gone);
    if (!gone && exe == backend) pids.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return pids;
}

std::map<std::string, CupsSite::Queue> CupsSite::queues() const {
  Ipp ipp(socket());
  ipp_t* request = new_request(IPP_OP_CUPS_GET_PRINTERS);
  static const char* const kWanted[] = {"printer-name",          "device-uri",
                                        "printer-info",          "printer-state",
                                        "printer-state-message", "printer-is-accepting-jobs"};
  ippAddStrings(request, IPP_TAG_OPERATION, IPP_TAG_KEYWORD, "requested-attributes",
                static_cast<int>(std::size(kWanted)), nullptr, kWanted);
  ipp_t* response = ipp.call(request);
  std::map<std::string, Queue> out;
  if (response == nullptr) return out;
  std::string name;
  Queue q;
  auto flush = [&] {
    if (!name.empty()) out[name] = q;
    name.clear();
    q = Queue{};
  };
  for (ipp_attribute_t* a = ippFirstAttribute(response); a != nullptr; a = ippNextAttribute(response)) {
    if (ippGetGroupTag(a) != IPP_TAG_PRINTER || ippGetName(a) == nullptr) {
      flush();
      continue;
    }
    const std::string attr = ippGetName(a);
    if (attr == "printer-name") name = text_of(a);
    if (attr == "device-uri") q.device_uri = text_of(a);
    if (attr == "printer-info") q.info = text_of(a);
    if (attr == "printer-state") q.state = text_of(a);
    if (attr == "printer-state-message") q.state_message = text_of(a);
    if (attr == "printer-is-accepting-jobs") q.accepting = ippGetBoolean(a, 0) != 0;
  }
  flush();
  ippDelete(response);
  return out;
}

}  // namespace dtu::testing
