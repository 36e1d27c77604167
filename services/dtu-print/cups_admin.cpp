#include "cups_admin.hpp"

#include <algorithm>
#include <chrono>

#include <cups/cups.h>

namespace dtu::services::print {

namespace {

using common::Errc;
using common::Error;

std::string printer_uri(const std::string& name) {
  char uri[HTTP_MAX_URI];
  httpAssembleURIf(HTTP_URI_CODING_ALL, uri, sizeof uri, "ipp", nullptr, "localhost", 0, "/printers/%s",
                   name.c_str());
  return uri;
}

// A request of operation `op` from us; operation attributes come first, so callers add theirs
// before any printer attribute.
ipp_t* new_request(ipp_op_t op) {
  ipp_t* request = ippNewRequest(op);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_NAME, "requesting-user-name", nullptr, cupsUser());
  return request;
}

// The connection's timeout callback: give up (the request fails) instead of waiting again.
int give_up(http_t*, void*) {
  return 0;
}

}  // namespace

IppCupsAdmin::IppCupsAdmin(std::optional<std::string> server) {
  if (server) cupsSetServer(server->c_str());
}

IppCupsAdmin::~IppCupsAdmin() {
  disconnect();
}

void IppCupsAdmin::disconnect() {
  if (http_ != nullptr) httpClose(http_);
  http_ = nullptr;
}

std::string IppCupsAdmin::server() const {
  return cupsServer();
}

common::Result<ipp_t*> IppCupsAdmin::call(ipp_t* request, const std::string& what) {
  const std::string at = what + " at CUPS " + cupsServer() + ": ";
  if (http_ == nullptr) {
    http_ = httpConnect2(cupsServer(), ippPort(), nullptr, AF_UNSPEC, cupsEncryption(), 1,
                         static_cast<int>(kIppTimeout.count()), nullptr);
    if (http_ == nullptr) {
      ippDelete(request);
      return Error(Errc::unavailable, at + "cannot connect (" + cupsLastErrorString() + ")");
    }
    httpSetTimeout(http_, std::chrono::duration<double>(kIppTimeout).count(), give_up, nullptr);
  }
  ipp_t* response = cupsDoRequest(http_, request, "/");
  const ipp_status_t status = cupsLastError();
  if (response == nullptr || status > IPP_STATUS_OK_CONFLICTING) {
    if (response != nullptr) ippDelete(response);
    std::string reason = cupsLastErrorString() != nullptr ? cupsLastErrorString() : ippErrorString(status);
    if (response == nullptr) {
      // libcups reports a timeout as errno 0 ("Success"): say what happened instead.
      const std::string cause = reason.empty() || reason == "Success" ? "" : " (" + reason + ")";
      reason = "no answer within " +
               std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kIppTimeout).count()) +
               " s, or the connection was lost" + cause;
    }
    // No answer (timed out, connection lost): the next request connects afresh.
    if (response == nullptr) disconnect();
    const Errc code = (response == nullptr || status == IPP_STATUS_ERROR_SERVICE_UNAVAILABLE ||
                       status == IPP_STATUS_ERROR_INTERNAL)
                          ? Errc::unavailable
                      : status == IPP_STATUS_ERROR_NOT_FOUND ? Errc::not_found
                      : (status == IPP_STATUS_ERROR_FORBIDDEN || status == IPP_STATUS_ERROR_NOT_AUTHORIZED ||
                         status == IPP_STATUS_ERROR_NOT_AUTHENTICATED)
                          ? Errc::denied
                          : Errc::refused;
    return Error(code, at + reason);
  }
  return response;
}

common::Result<std::map<std::string, QueueInfo>> IppCupsAdmin::queues() {
  ipp_t* request = new_request(IPP_OP_CUPS_GET_PRINTERS);
  static const char* const kWanted[] = {"printer-name", "device-uri", "printer-info", "queued-job-count"};
  ippAddStrings(request, IPP_TAG_OPERATION, IPP_TAG_KEYWORD, "requested-attributes",
                static_cast<int>(std::size(kWanted)), nullptr, kWanted);
  auto response = call(request, "listing the queues");
  std::map<std::string, QueueInfo> out;
  // No queue at all is answered with "not found".
  if (!response.ok() && response.error().code == Errc::not_found) return out;
  if (!response.ok()) return response.error();
  std::string name;
  QueueInfo queue;
  auto flush = [&] {
    if (!name.empty()) out[name] = queue;
    name.clear();
    queue = QueueInfo{};
  };
  for (ipp_attribute_t* a = ippFirstAttribute(*response); a != nullptr; a = ippNextAttribute(*response)) {
    if (ippGetGroupTag(a) != IPP_TAG_PRINTER || ippGetName(a) == nullptr) {
      flush();
      continue;
    }
    const std::string attr = ippGetName(a);
    if (attr == "queued-job-count") queue.jobs = static_cast<std::size_t>(std::max(0, ippGetInteger(a, 0)));
    const char* value = ippGetString(a, 0, nullptr);
    if (value == nullptr) continue;
    if (attr == "printer-name") name = value;
    if (attr == "device-uri") queue.device_uri = value;
    if (attr == "printer-info") queue.info = value;
  }
  flush();
  ippDelete(*response);
  return out;
}

common::Result<void> IppCupsAdmin::put(const std::string& name, const std::string& device_uri,
                                       const std::string& info) {
  ipp_t* request = new_request(IPP_OP_CUPS_ADD_MODIFY_PRINTER);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_URI, "printer-uri", nullptr, printer_uri(name).c_str());
  ippAddString(request, IPP_TAG_PRINTER, IPP_TAG_URI, "device-uri", nullptr, device_uri.c_str());
  ippAddString(request, IPP_TAG_PRINTER, IPP_TAG_TEXT, "printer-info", nullptr, info.c_str());
  ippAddBoolean(request, IPP_TAG_PRINTER, "printer-is-accepting-jobs", 1);
  ippAddInteger(request, IPP_TAG_PRINTER, IPP_TAG_ENUM, "printer-state", IPP_PSTATE_IDLE);
  auto response = call(request, "creating queue " + name);
  if (!response.ok()) return response.error();
  ippDelete(*response);
  return {};
}

common::Result<void> IppCupsAdmin::remove(const std::string& name) {
  ipp_t* request = new_request(IPP_OP_CUPS_DELETE_PRINTER);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_URI, "printer-uri", nullptr, printer_uri(name).c_str());
  auto response = call(request, "deleting queue " + name);
  if (!response.ok()) return response.error();
  ippDelete(*response);
  return {};
}

common::Result<void> IppCupsAdmin::pause(const std::string& name, const std::string& message) {
  ipp_t* request = new_request(IPP_OP_PAUSE_PRINTER);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_URI, "printer-uri", nullptr, printer_uri(name).c_str());
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_TEXT, "printer-state-message", nullptr, message.c_str());
  auto response = call(request, "stopping queue " + name);
  if (!response.ok()) return response.error();
  ippDelete(*response);
  return {};
}

common::Result<void> IppCupsAdmin::resume(const std::string& name) {
  ipp_t* request = new_request(IPP_OP_RESUME_PRINTER);
  ippAddString(request, IPP_TAG_OPERATION, IPP_TAG_URI, "printer-uri", nullptr, printer_uri(name).c_str());
  auto response = call(request, "starting queue " + name);
  if (!response.ok()) return response.error();
  ippDelete(*response);
  return {};
}

}  // namespace dtu::services::print
