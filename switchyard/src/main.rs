//! The `switchyard` command line: argument parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchyard::admin::client::AdminClient;
use switchyard::config;
use switchyard::ctl::{self, CtlCommand};
use switchyard::runtime::Inherited;

/// mimalloc: the proxy allocates and frees small buffers per request on every worker;
/// glibc's malloc spent ~14% of the HTTP path's CPU doing it (perf, `bench http`). What
/// connections keep for their life goes to a heap of its own (`memory::lasting`).
#[global_allocator]
static ALLOCATOR: switchyard::memory::Allocator = switchyard::memory::Allocator;

/// Multi-protocol reverse proxy and load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (logs to stderr).
    Run {
        /// Config file (default: ./switchyard.toml, else /etc/switchyard/switchyard.toml).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over from the proxy running with this config: receive its listening sockets
        /// over its upgrade socket, and tell it to stop once this process is ready.
        #[arg(long)]
        upgrade: bool,
        /// Once every listener accepts, write the addresses bound (admin API and each
        /// listener, useful with port 0) to this file as JSON.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file: exit 0, or print every error and exit 2.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Talk to a running proxy's admin API.
    Ctl {
        /// Admin API address.
        #[arg(
            long,
            env = "SWITCHYARD_ADMIN",
            default_value = "http://127.0.0.1:9900"
        )]
        admin: String,
        /// Bearer token for mutating calls.
        #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: CtlArgs,
    },
}

#[derive(Subcommand)]
enum CtlArgs {
    /// Listeners, pools, servers: state, connections, bytes, last check.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop new work to a server.
    Drain {
        pool: String,
        server: String,
        /// Return only when the server has no active sessions.
        #[arg(long)]
        wait: bool,
        /// Longest time --wait waits.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Put a server back into service.
    Ready { pool: String, server: String },
    /// Take a server out of service and cut its sessions.
    Maint { pool: String, server: String },
    /// Re-read the config file and apply the difference.
    Reload,
    /// What a resolver answers for a key (and whether it was cached).
    Resolve { resolver: String, key: String },
    /// Drop a key from a resolver's cache (on every instance, with Redis).
    Purge { resolver: String, key: String },
    /// Usage per tenant since start.
    Tenants,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::duration::parse(text)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => match switchyard::runtime::load_file(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            upgrade,
            ready_file,
        } => {
            let path = match config.map_or_else(config::default_path, Ok) {
                Ok(path) => path,
                Err(message) => {
                    eprintln!("{message}");
                    return ExitCode::from(2);
                }
            };
            run(path, upgrade, ready_file)
        }
        Command::Ctl {
            admin,
            token,
            command,
        } => ctl_main(&admin, token, command),
    }
}

fn run(path: PathBuf, upgrade: bool, ready_file: Option<PathBuf>) -> ExitCode {
    let config = match switchyard::runtime::load_file(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    switchyard::observe::init_tracing(&config.log.level);
    tracing::info!(config = %path.display(), "configuration loaded");
    switchyard::memory::keep_pages_small();
    // The control plane (admin API, health checks, reloads) runs here; connections run on
    // the worker threads `runtime::build` starts.
    let runtime = match single_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let mut inherited = Inherited::default();
    if upgrade {
        let socket = switchyard::runtime::upgrade::socket_path(&config, &path);
        match switchyard::runtime::upgrade::receive(&socket) {
            Ok(received) => inherited = received,
            Err(e) => {
                tracing::error!("upgrade: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    runtime.block_on(async {
        let shared = match switchyard::runtime::build(&config, path, &mut inherited) {
            Ok(shared) => shared,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let admin = switchyard::admin::service;
        match switchyard::runtime::run(config, shared, inherited, ready_file, admin).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn ctl_main(admin: &str, token: Option<String>, command: CtlArgs) -> ExitCode {
    let command = match command {
        CtlArgs::Status { json } => CtlCommand::Status { json },
        CtlArgs::Drain {
            pool,
            server,
            wait,
            timeout,
        } => CtlCommand::Drain {
            pool,
            server,
            wait: wait.then_some(timeout),
        },
        CtlArgs::Ready { pool, server } => CtlCommand::Ready { pool, server },
        CtlArgs::Maint { pool, server } => CtlCommand::Maint { pool, server },
        CtlArgs::Reload => CtlCommand::Reload,
        CtlArgs::Resolve { resolver, key } => CtlCommand::Resolve { resolver, key },
        CtlArgs::Purge { resolver, key } => CtlCommand::Purge { resolver, key },
        CtlArgs::Tenants => CtlCommand::Tenants,
    };
    let client = match AdminClient::new(admin, token) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match single_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ctl::run(&client, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A runtime on the calling thread; on failure, the message is printed and the exit code
/// returned.
fn single_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}
