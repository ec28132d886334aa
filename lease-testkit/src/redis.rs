//! A throwaway `redis-server`.

use std::fmt::Write as _;
use std::time::Duration;

use tempfile::TempDir;

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
    /// Further `--name value` arguments.
    pub extra_args: Vec<String>,
}

/// A `redis-server` on a free loopback port in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    server: Server,
    port: u16,
    password: Option<String>,
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
            // Run the server under a tiny shell watchdog (the shell `exec`s redis-server, so the
            // pid is the server's): a server kept in a `static` is never dropped, and must not
            // outlive the test process.
            let mut wrapped = vec![
                "-c".to_owned(),
                WATCHDOG.to_owned(),
                "redis-watchdog".to_owned(),
                std::process::id().to_string(),
                program.display().to_string(),
            ];
            wrapped.extend(args);
            let ready = ready_check(port, options.password.clone());
            match Server::spawn(
                "redis-server",
                std::path::Path::new("/bin/sh"),
                wrapped,
                dir.path(),
                Duration::from_secs(10),
                &ready,
            ) {
                Ok(server) => {
                    return Some(RedisServer {
                        server,
                        port,
                        password: options.password,
                        _dir: dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
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

/// `sh -c WATCHDOG name PARENT_PID PROGRAM ARGS…`: starts a background loop that SIGKILLs the
/// server once the parent (the test process) is gone, then becomes the server. The loop also
/// ends, without killing anything, when the server exits first.
const WATCHDOG: &str = r#"parent=$1; shift
( while kill -0 "$parent" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 0.2; done
  kill -0 "$parent" 2>/dev/null || kill -9 $$ 2>/dev/null ) </dev/null >/dev/null 2>&1 &
exec "$@""#;

fn ready_check(port: u16, password: Option<String>) -> impl Fn() -> bool {
    move || {
        let request = match &password {
            Some(pw) => format!("AUTH {pw}\r\nPING\r\n"),
            None => "PING\r\n".to_owned(),
        };
        tcp_answers(port, request.as_bytes(), b"+PONG")
    }
}
