#include "cups_admin.hpp"

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

// Sends `request` (consumed) to the scheduler; the response (to ippDelete) or the error, whose
// detail says what was asked and CUPS's own reason.
common::Result<ipp_t*> call(ipp_t* request, const std::string& what) {
  ipp_t* response = cupsDoRequest(CUPS_HTTP_DEFAULT, request, "/");
  const ipp_status_t status = cupsLastError();
  if (response == nullptr || status > IPP_STATUS_OK_CONFLICTING) {
    if (response != nullptr) ippDelete(response);
    const std::string reason =
        cupsLastErrorString() != nullptr ? cupsLastErrorString() : ippErrorString(status);
    const Errc code = (status == IPP_STATUS_ERROR_SERVICE_UNAVAILABLE || status == IPP_STATUS_ERROR_INTERNAL)
                          ? Errc::unavailable
                      : status == IPP_STATUS_ERROR_NOT_FOUND ? Errc::not_found
                      : (status == IPP_STATUS_ERROR_FORBIDDEN || status == IPP_STATUS_ERROR_NOT_AUTHORIZED ||
                         status == IPP_STATUS_ERROR_NOT_AUTHENTICATED)
                          ? Errc::denied
                          : Errc::refused;
    return Error(code, what + " at CUPS " + cupsServer() + ": " + reason);
  }
  return response;
}

}  // namespace

IppCupsAdmin::IppCupsAdmin(std::optional<std::string> server) {
  if (server) cupsSetServer(server->c_str());
}

std::string IppCupsAdmin::server() const {
  return cupsServer();
}

common::Result<std::map<std::string, QueueInfo>> IppCupsAdmin::queues() {
  ipp_t* request = new_request(IPP_OP_CUPS_GET_PRINTERS);
  static const char* const kWanted[] = {"printer-name", "device-uri", "printer-info"};
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

}  // namespace dtu::services::print
