//! A throwaway `redis-server`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
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
            std::fs::write(&clock_file, "+0\n").expect("write the faketime file");
            let preload = faketime_preload(dir.path())?;
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
                    let mut env = vec![
                        format!("LD_PRELOAD={preload}"),
                        format!("FAKETIME_TIMESTAMP_FILE={}", file.display()),
                        "FAKETIME_NO_CACHE=1".to_owned(),
                        "DONT_FAKE_MONOTONIC=1".to_owned(),
                        program.display().to_string(),
                    ];
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
        let tmp = file.with_extension("new");
        std::fs::write(&tmp, format!("{offset_secs:+}\n")).expect("write the faketime file");
        // Renamed into place, so the server never reads a half-written file.
        std::fs::rename(&tmp, file).expect("replace the faketime file");
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

/// Where Debian and others install libfaketime's multi-threaded preload library.
const FAKETIME_LIBRARIES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/lib64/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
];

/// A preload shim, loaded before libfaketime. libfaketime 0.9.10 deadlocks in a redis-server
/// that uses the system's jemalloc (Debian's does): jemalloc's initialisation reads the monotonic
/// clock and initialises a condition variable, libfaketime's wrappers of both initialise
/// libfaketime lazily, which calls `dlsym`, which allocates, which waits on jemalloc's
/// initialisation lock. The shim answers those two calls without libfaketime (the monotonic
/// clock is not faked anyway), so libfaketime first initialises from Redis's own code.
const FAKETIME_SHIM: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static int (*next_clock_gettime)(clockid_t, struct timespec *);
int clock_gettime(clockid_t id, struct timespec *ts) {
    if (id != CLOCK_REALTIME && id != CLOCK_REALTIME_COARSE)
        return (int)syscall(SYS_clock_gettime, id, ts);
    if (!next_clock_gettime)
        next_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    return next_clock_gettime(id, ts);
}
static int (*next_cond_init)(pthread_cond_t *, const pthread_condattr_t *);
int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a) {
    if (a == NULL) {
        pthread_cond_t init = PTHREAD_COND_INITIALIZER;
        memcpy(c, &init, sizeof init);
        return 0;
    }
    if (!next_cond_init)
        next_cond_init = (int (*)(pthread_cond_t *, const pthread_condattr_t *))dlsym(RTLD_NEXT, "pthread_cond_init");
    return next_cond_init(c, a);
}
"#;

/// `LD_PRELOAD` for a server under libfaketime: the shim (built into `dir`) and the library.
/// `None` (with a note) when libfaketime or `cc` is missing and `CI` is unset.
fn faketime_preload(dir: &Path) -> Option<String> {
    let Some(library) = FAKETIME_LIBRARIES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "libfaketime is not installed and CI is set: install the Debian package \
                 `faketime` (scripts/test.sh does)"
            );
        }
        eprintln!("skipping: libfaketime not found (install the Debian package `faketime`)");
        return None;
    };
    let cc = require_binary("cc", "gcc")?;
    let source = dir.join("faketime-shim.c");
    let shim = dir.join("faketime-shim.so");
    std::fs::write(&source, FAKETIME_SHIM).expect("write the faketime shim");
    let out = std::process::Command::new(cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "building the faketime shim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(format!("{}:{}", shim.display(), library.display()))
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
