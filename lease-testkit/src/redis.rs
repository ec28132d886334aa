//! A throwaway `redis-server`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::faketime;
use crate::process::{Server, free_port, require_binary, tcp_answers};

/// How to start a [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: the default user's password.
    pub password: Option<String>,
    /// Extra ACL rules, one `user ...` line each as in a Redis ACL config
    /// (e.g. `user locker on >secret ~lease:* &lease:* +@all`).
    pub acl_users: Vec<String>,
    /// AOF with `appendfsync always`, so fences survive a restart.
    pub aof_always: bool,
    /// Further `--name value` arguments (e.g. `--maxmemory 3mb --maxmemory-policy volatile-ttl`).
    pub extra_args: Vec<String>,
    /// Run the server under libfaketime, with its wall clock (`TIME`, key expiry) offset by
    /// [`RedisServer::set_clock_offset`] while it runs; the monotonic clock stays real. Needs the
    /// Debian package `faketime` (libfaketime) and a C compiler (`cc`) for a small preload shim; without
    /// them the test is skipped (a panic under `CI`).
    pub faketime: bool,
}

/// A `redis-server` on a free loopback port in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    server: Server,
    port: u16,
    password: Option<String>,
    /// The libfaketime timestamp file, when started with [`RedisOptions::faketime`].
    clock_file: Option<PathBuf>,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server. `None` if `redis-server` is not installed and `CI` is unset.
    ///
    /// # Panics
    ///
    /// When the server cannot be started (or, under `CI`, is not installed), with its log.
    pub fn start(options: RedisOptions) -> Option<RedisServer> {
        let program = require_binary("redis-server", "redis-server")?;
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut conf = String::new();
        for user in &options.acl_users {
            writeln!(conf, "{user}").expect("write to string");
        }
        let conf_path = dir.path().join("redis.conf");
        std::fs::write(&conf_path, conf).expect("write redis.conf");
        let (clock_file, preload) = if options.faketime {
            let clock_file = dir.path().join("faketime");
            faketime::set_offset(&clock_file, 0).expect("write the faketime file");
            let preload = faketime::preload_or_skip(dir.path())?;
            (Some(clock_file), Some(preload))
        } else {
            (None, None)
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut args = vec![
                conf_path.display().to_string(),
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                dir.path().display().to_string(),
                "--save".into(),
                String::new(),
                "--daemonize".into(),
                "no".into(),
                "--protected-mode".into(),
                "no".into(),
            ];
            if let Some(pw) = &options.password {
                args.extend(["--requirepass".into(), pw.clone()]);
            }
            if options.aof_always {
                args.extend([
                    "--appendonly".into(),
                    "yes".into(),
                    "--appendfsync".into(),
                    "always".into(),
                ]);
            } else {
                args.extend(["--appendonly".into(), "no".into()]);
            }
            args.extend(options.extra_args.iter().cloned());
            let (program, args) = match (&clock_file, &preload) {
                (Some(file), Some(preload)) => {
                    // `env` execs the server in turn, so the pid stays the server's.
                    let mut env: Vec<String> = faketime::env(preload, file)
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    env.push(program.display().to_string());
                    env.extend(args);
                    (Path::new("env"), env)
                }
                _ => (program.as_path(), args),
            };
            let ready = ready_check(port, options.password.clone());
            match Server::spawn(
                "redis-server",
                program,
                args,
                dir.path(),
                Duration::from_secs(10),
                &ready,
            ) {
                Ok(server) => {
                    return Some(RedisServer {
                        server,
                        port,
                        password: options.password,
                        clock_file,
                        _dir: dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// One server with default options for every test of this test binary (each test under its
    /// own key prefix, e.g. from [`unique_prefix`](crate::unique_prefix)), started on first use.
    /// `None` if `redis-server` is not installed and `CI` is unset.
    ///
    /// It is never dropped; the watchdog stops it when the test process exits.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn shared() -> Option<&'static RedisServer> {
        static SHARED: LazyLock<Option<RedisServer>> =
            LazyLock::new(|| RedisServer::start(RedisOptions::default()));
        SHARED.as_ref()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/` (without credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process, to pause, resume or kill it.
    pub fn process(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Sets the server's wall clock to the real one plus `offset_secs` (negative: behind), at
    /// once, as an NTP step on the Redis host would; `TIME` and key expiry follow it, the
    /// monotonic clock does not.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`RedisOptions::faketime`].
    pub fn set_clock_offset(&self, offset_secs: i64) {
        let file = self
            .clock_file
            .as_ref()
            .expect("set_clock_offset needs a server started with RedisOptions::faketime");
        faketime::set_offset(file, offset_secs).expect("replace the faketime file");
    }

    /// Kills the server and starts it again on the same port and data dir; waits until it answers.
    ///
    /// # Panics
    ///
    /// When it does not come back, with its log.
    pub fn restart(&mut self) {
        let ready = ready_check(self.port, self.password.clone());
        self.server
            .restart(Duration::from_secs(10), &ready)
            .unwrap_or_else(|e| panic!("redis-server did not restart: {e}"));
    }
}

fn ready_check(port: u16, password: Option<String>) -> impl Fn() -> bool {
    move || {
        let request = match &password {
            Some(pw) => format!("AUTH {pw}\r\nPING\r\n"),
            None => "PING\r\n".to_owned(),
        };
        tcp_answers(port, request.as_bytes(), b"+PONG")
    }
}
