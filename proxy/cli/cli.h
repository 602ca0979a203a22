#pragma once
// Command line (SPEC §6): parses argv with CLI11 and dispatches to one command.
//
//   idemproxy [run] --config FILE        serve in the foreground; -c FILE too
//   idemproxy check --config FILE        validate; exit 0, or 1 with FILE:LINE:COL: message
//   idemproxy keys list|show|forget|reconcile --config FILE [--route R] [--key K] [--scope V]...
//                                   [--json] [--uncertain]
//   idemproxy reload --config FILE --pid PID   validate FILE; if valid, send SIGHUP to PID
//   idemproxy store verify --config FILE  walk the store; exit 0 if sound, 1 listing the damage
//   idemproxy --version | --help
//
// Exit codes: 0 ok, 1 invalid config or failed operation, 2 usage error.
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace idem {

enum class CliCommand {
  Run,          // serve (the default when no command is given)
  Check,        // validate the configuration file
  Keys,         // inspect or forget records; see KeysCommand
  Reload,       // validate the file, then signal the daemon to reload it (ExecReload=)
  StoreVerify,  // walk the whole store and report damage
};

enum class KeysCommand {
  None,       // not a keys command
  List,       // every record: route, key, state, status, age, expires
  Show,       // one record, by route + key + scope values
  Forget,     // delete one record, by route + key + scope values
  Reconcile,  // settle one uncertain record with its route's reconcile lookup (SPEC §1.6)
};

struct CliOptions {
  CliCommand command = CliCommand::Run;
  std::string config_path;  // --config / -c; always set once parsing succeeded
  KeysCommand keys = KeysCommand::None;
  std::string route;                // --route: required for show/forget, a filter for list
  std::string key;                  // --key: required for show/forget
  std::vector<std::string> scopes;  // --scope, repeatable, in the order of the route's `scope`
  bool json = false;                // --json (keys list): one JSON object per line
  bool uncertain = false;           // --uncertain (keys list): only records a reconcile would touch
  long pid = 0;                     // --pid (reload): the daemon's process id
};

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // invalid configuration, or the operation failed
inline constexpr int kExitUsage = 2;    // bad command line

// Outcome of parsing a command line: options to run with, or an exit code when parsing ended
// the program (--help and --version: 0, printed to `out`; usage errors: 2, printed to `err`).
struct CliParse {
  std::optional<CliOptions> options;
  int exit_code = kExitOk;
};

// Parses the arguments after the program name. Does not read the configuration file.
CliParse parseCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// Parses argv and runs the command; returns the process exit code.
int runCli(int argc, char** argv);
// Same, with the arguments after the program name and explicit streams (for tests). Output of
// `check`, `--help`, `--version` and usage errors goes to these streams.
int runCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// `idemproxy check`: prints each error as FILE:LINE:COL: message to `err` and returns 1, or
// prints "FILE: ok" to `out` and returns 0.
int cmdCheck(const CliOptions& options, std::ostream& out, std::ostream& err);

// `idemproxy reload`: validates the file like `check`; if it is invalid, logs each problem as
// `reload-rejected` (level error) and returns 1 without signalling, so `systemctl reload`
// fails and the daemon keeps its configuration untouched; if valid, sends SIGHUP to
// options.pid and returns 0 (1 if the signal cannot be sent).
int cmdReload(const CliOptions& options);

// Implemented in daemon.cpp and keys_cli.cpp (the server and the store wire these up).
int cmdRun(const CliOptions& options);
int cmdKeys(const CliOptions& options);
int cmdStoreVerify(const CliOptions& options);
// `keys reconcile` (keys_reconcile.cpp), once cmdKeys has opened the store and found the record's
// id: claims the key's lookup, sends it through the route's upstream, settles what it found.
class Store;
struct Config;
struct RouteConfig;
int keysReconcile(const Config& config, const RouteConfig& route, Store& store,
                  const std::string& key, const std::vector<std::string>& scope);

}  // namespace idem
