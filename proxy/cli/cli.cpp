// Command line parsing and dispatch. See cli.h.
#include "cli/cli.h"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iostream>

#include "base/log.h"
#include "config/config.h"
#include "version.h"

namespace idem {

namespace {

// Adds the options naming one record (show, forget).
void addRecordOptions(CLI::App* command, CliOptions& options) {
  command->add_option("--route", options.route, "route name")->required();
  command->add_option("--key", options.key, "idempotency key, as the client sent it")->required();
  command
      ->add_option("--scope", options.scopes,
                   "value of one of the route's scope headers, in the order of its `scope` "
                   "list; repeat for each")
      ->allow_extra_args(false);
}

}  // namespace

CliParse parseCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CliOptions options;
  CLI::App app{"idemproxy: a reverse proxy that makes unsafe HTTP requests idempotent",
               "idemproxy"};
  app.set_version_flag("--version", std::string("idemproxy ") + IDEMPROXY_VERSION);
  app.require_subcommand(0, 1);
  // Subcommands hand options they do not know (--config) to their parent, so that
  // `idemproxy check --config FILE` and `idemproxy --config FILE check` both work.
  app.fallthrough();
  app.add_option("-c,--config", options.config_path, "configuration file (YAML)");

  app.add_subcommand("run", "serve in the foreground (the default command)");
  CLI::App* check = app.add_subcommand("check", "validate the configuration file and exit");
  CLI::App* keys = app.add_subcommand("keys", "inspect or forget recorded idempotency keys");
  keys->require_subcommand(1);
  CLI::App* list =
      keys->add_subcommand("list", "list records: route, key, state, status, age, expires");
  list->add_option("--route", options.route, "only records of this route");
  list->add_flag("--json", options.json, "one JSON object per line");
  list->add_flag("--uncertain", options.uncertain,
                 "only uncertain outcomes (outcome-unknown, upstream-timeout, upstream-failed) of "
                 "routes with a reconcile lookup: the keys a reconcile would touch");
  CLI::App* show = keys->add_subcommand("show", "show one record");
  addRecordOptions(show, options);
  CLI::App* forget = keys->add_subcommand("forget", "delete one record, so the key is new again");
  addRecordOptions(forget, options);
  CLI::App* reconcile = keys->add_subcommand(
      "reconcile", "settle one uncertain outcome with the route's reconcile lookup");
  addRecordOptions(reconcile, options);
  CLI::App* reload = app.add_subcommand(
      "reload", "validate the configuration file, then tell the daemon to reload it (SIGHUP)");
  reload->add_option("--pid", options.pid, "process id of the running daemon ($MAINPID)")
      ->required()
      ->check(CLI::Range(2L, static_cast<long>(INT32_MAX)));
  CLI::App* store = app.add_subcommand("store", "check the store");
  store->require_subcommand(1);
  CLI::App* verify =
      store->add_subcommand("verify", "walk the whole store and report any damage (exit 1)");

  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 pops from the back
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e, out, err);
    return CliParse{std::nullopt, code == 0 ? kExitOk : kExitUsage};
  }

  if (options.config_path.empty()) {
    err << "idemproxy: --config FILE is required\nRun with --help for more information.\n";
    return CliParse{std::nullopt, kExitUsage};
  }
  // `run` and no command at all are the same: CliCommand::Run, the default.
  if (check->parsed()) {
    options.command = CliCommand::Check;
  } else if (reload->parsed()) {
    options.command = CliCommand::Reload;
  } else if (store->parsed() && verify->parsed()) {
    options.command = CliCommand::StoreVerify;
  } else if (keys->parsed()) {
    options.command = CliCommand::Keys;
    if (list->parsed()) {
      options.keys = KeysCommand::List;
    } else if (show->parsed()) {
      options.keys = KeysCommand::Show;
    } else if (reconcile->parsed()) {
      options.keys = KeysCommand::Reconcile;
    } else {
      options.keys = KeysCommand::Forget;
    }
  }
  return CliParse{std::move(options), kExitOk};
}

int cmdCheck(const CliOptions& options, std::ostream& out, std::ostream& err) {
  ConfigResult result = loadConfigFile(options.config_path);
  if (!result.ok()) {
    for (const ConfigError& e : result.errors) err << e.str() << '\n';
    err.flush();
    return kExitFailure;
  }
  out << options.config_path << ": ok\n";
  out.flush();
  return kExitOk;
}

int cmdReload(const CliOptions& options) {
  ConfigResult result = loadConfigFile(options.config_path);
  if (!result.ok()) {
    // Errors, not plain text: under systemd this runs as ExecReload=, and its lines must reach
    // `journalctl -p err` like the daemon's own (the daemon never hears of this attempt).
    for (const ConfigError& e : result.errors) {
      log::error("reload-rejected", {{"error", e.str()}, {"pid", options.pid}});
    }
    return kExitFailure;
  }
  if (::kill(static_cast<pid_t>(options.pid), SIGHUP) != 0) {
    log::error("reload-signal-failed", {{"pid", options.pid}, {"error", std::strerror(errno)}});
    return kExitFailure;
  }
  log::info("reload-requested", {{"pid", options.pid}, {"config", options.config_path}});
  return kExitOk;
}

int runCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CliParse parsed = parseCli(args, out, err);
  if (!parsed.options) return parsed.exit_code;
  const CliOptions& options = *parsed.options;
  try {
    switch (options.command) {
      case CliCommand::Check:
        return cmdCheck(options, out, err);
      case CliCommand::Keys:
        return cmdKeys(options);
      case CliCommand::Reload:
        return cmdReload(options);
      case CliCommand::StoreVerify:
        return cmdStoreVerify(options);
      case CliCommand::Run:
        return cmdRun(options);
    }
    return kExitUsage;
  } catch (const std::exception& e) {
    err << "idemproxy: " << e.what() << '\n';
    return kExitFailure;
  }
}

int runCli(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return runCli(args, std::cout, std::cerr);
}

}  // namespace idem
