//! A throwaway PostgreSQL server (Debian's `postgresql` package) and a PgBouncer in front of
//! it (Debian's `pgbouncer`).
//!
//! PostgreSQL and PgBouncer refuse to run as root: when the tests run as root, both run as the
//! system user `postgres` (created by Debian's package), or `nobody`, through `setpriv`, with
//! their temp dir handed to that user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

use crate::process::{Server, free_port, require_binary};

/// The superuser the server is initialised with, and its password (SCRAM-SHA-256 over TCP).
pub const POSTGRES_USER: &str = "lease";
/// See [`POSTGRES_USER`].
pub const POSTGRES_PASSWORD: &str = "lease-test-secret";

/// How to start a [`PostgresServer`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Further `-c name=value` settings (e.g. `synchronous_commit=off`).
    pub settings: Vec<String>,
    /// TLS (`ssl=on`) with this certificate and key (PEM files, e.g. from
    /// [`make_test_certs`](crate::make_test_certs)): copied into the server's dir, readable by
    /// its user only, as PostgreSQL demands.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A PostgreSQL server on a free loopback port, its data and socket in its own temp dir;
/// stopped on drop (immediate shutdown).
#[derive(Debug)]
pub struct PostgresServer {
    server: Server,
    port: u16,
    bin: PathBuf,
    dir: TempDir,
}

/// Where Debian installs the server's programs (not on `PATH`): the newest version's.
fn debian_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// The directory of `postgres`, `initdb` and `pg_isready`: Debian's, else `PATH`'s. `None`
/// (skip) when missing and `CI` is unset.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = debian_bin_dir() {
        return Some(dir);
    }
    let postgres = require_binary("postgres", "postgresql")?;
    Some(postgres.parent().unwrap_or(Path::new("/")).to_owned())
}

/// The user the servers run as, when the tests run as root: `(uid, gid)`.
fn unprivileged() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    Some(
        find("postgres")
            .or_else(|| find("nobody"))
            .unwrap_or((65534, 65534)),
    )
}

/// `program args` as the unprivileged user (through `setpriv`, which execs it: the process id
/// stays the program's), or as they are when not root.
fn as_user(program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
    match unprivileged() {
        None => (program.to_owned(), args),
        Some((uid, gid)) => {
            let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .expect("setpriv (util-linux) to run the server as an unprivileged user");
            let mut all = vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
                program.display().to_string(),
            ];
            all.extend(args);
            (setpriv, all)
        }
    }
}

/// Hands `path` to the unprivileged user, when running as root.
fn hand_over(path: &Path) {
    if let Some((uid, gid)) = unprivileged() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Removes `dir` once this test process is gone (a server kept in a `static` is never dropped,
/// and a PostgreSQL data directory is tens of megabytes): a detached shell that waits for the
/// process, gives the watchdog time to kill the server, and removes the directory. A directory
/// removed on drop before then is simply gone already.
fn remove_when_gone(dir: &Path) {
    const CLEANER: &str =
        r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; sleep 2; rm -rf -- "$2""#;
    let spawned = Command::new("/bin/sh")
        .args(["-c", CLEANER, "postgres-cleaner"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("cannot start the cleaner of {}: {e}", dir.display());
    }
}

/// Whether a server (PostgreSQL or PgBouncer) accepts connections on `port`.
fn accepting(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
        .status()
        .is_ok_and(|s| s.success())
}

impl PostgresServer {
    /// Whether PostgreSQL's programs are installed (Debian's directory, else `PATH`), for a test
    /// that starts a server through another program. `false` (with a note) when they are
    /// missing and `CI` is unset.
    ///
    /// # Panics
    ///
    /// When they are missing and `CI` is set.
    pub fn installed() -> bool {
        bin_dir().is_some()
    }

    /// Initialises a cluster (superuser [`POSTGRES_USER`] with [`POSTGRES_PASSWORD`], SCRAM
    /// over TCP) and starts it. `None` if PostgreSQL is not installed and `CI` is unset.
    ///
    /// # Panics
    ///
    /// When the server cannot be started (or, under `CI`, is not installed), with its log.
    pub fn start(options: PostgresOptions) -> Option<PostgresServer> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir().expect("temp dir for PostgreSQL");
        remove_when_gone(dir.path());
        hand_over(dir.path());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{POSTGRES_PASSWORD}\n")).expect("write the pwfile");
        hand_over(&pwfile);
        let data = dir.path().join("data");
        let (program, args) = as_user(
            &bin.join("initdb"),
            vec![
                "-D".into(),
                data.display().to_string(),
                "-U".into(),
                POSTGRES_USER.into(),
                format!("--pwfile={}", pwfile.display()),
                "--auth-local=trust".into(),
                "--auth-host=scram-sha-256".into(),
                "--encoding=UTF8".into(),
                "--no-locale".into(),
                "--no-sync".into(),
                // 1 MB WAL segments instead of 16: a throwaway cluster of a few MB.
                "--wal-segsize=1".into(),
            ],
        );
        let out = Command::new(&program)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut args = vec![
                "-D".into(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                dir.path().display().to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
                "-c".into(),
                "max_connections=300".into(),
                "-c".into(),
                "shared_buffers=16MB".into(),
                "-c".into(),
                "min_wal_size=4MB".into(),
                "-c".into(),
                "max_wal_size=32MB".into(),
            ];
            for s in &options.settings {
                args.extend(["-c".into(), s.clone()]);
            }
            if let Some((cert, key)) = &options.tls {
                let copy = |from: &Path, name: &str| {
                    let to = dir.path().join(name);
                    std::fs::copy(from, &to)
                        .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
                    std::fs::set_permissions(
                        &to,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .expect("chmod the TLS file");
                    hand_over(&to);
                    to.display().to_string()
                };
                let (cert, key) = (copy(cert, "server.crt"), copy(key, "server.key"));
                args.extend([
                    "-c".into(),
                    "ssl=on".into(),
                    "-c".into(),
                    format!("ssl_cert_file={cert}"),
                    "-c".into(),
                    format!("ssl_key_file={key}"),
                ]);
            }
            let (program, args) = as_user(&bin.join("postgres"), args);
            let check = bin.clone();
            match Server::spawn(
                "postgres",
                &program,
                args,
                dir.path(),
                Duration::from_secs(30),
                &move || accepting(&check, port),
            ) {
                Ok(server) => {
                    return Some(PostgresServer {
                        server,
                        port,
                        bin,
                        dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start PostgreSQL: {last_err}");
    }

    /// One server with default options for every test of this test binary (each test under its
    /// own schema or keys), started on first use. `None` if PostgreSQL is not installed and
    /// `CI` is unset. The watchdog stops it when the test process exits.
    ///
    /// # Panics
    ///
    /// As [`PostgresServer::start`].
    pub fn shared() -> Option<&'static PostgresServer> {
        static SHARED: LazyLock<Option<PostgresServer>> =
            LazyLock::new(|| PostgresServer::start(PostgresOptions::default()));
        SHARED.as_ref()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://lease:PASSWORD@127.0.0.1:PORT/postgres`: the superuser, over TCP.
    pub fn url(&self) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The postmaster's process.
    pub fn process(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Pauses the server (SIGSTOP) and returns once every thread of it is stopped: the
    /// postmaster and every backend, since a stopped postmaster alone still lets the backends of
    /// open connections answer. The postmaster stops first, so no backend is forked after the
    /// list of them is read.
    pub fn pause(&self) {
        if let Some(pid) = self.server.pid() {
            crate::process::pause_process(pid);
            for child in crate::process::children(pid) {
                crate::process::pause_process(child);
            }
        }
    }

    /// Resumes a paused server (SIGCONT to the postmaster and its backends).
    pub fn resume(&self) {
        if let Some(pid) = self.server.pid() {
            self.server.resume();
            for child in crate::process::children(pid) {
                if let Some(p) = i32::try_from(child).ok().and_then(Pid::from_raw) {
                    let _ = kill_process(p, Signal::CONT);
                }
            }
        }
    }

    /// Stops the server as `pg_ctl stop -m immediate` does (SIGQUIT: no checkpoint, crash
    /// recovery at the next start), starts it again on the same port and data, and waits until
    /// it accepts connections.
    ///
    /// # Panics
    ///
    /// When it does not come back, with its log.
    pub fn restart_immediate(&mut self) {
        self.server.stop(Signal::QUIT, Duration::from_secs(10));
        let (bin, port) = (self.bin.clone(), self.port);
        self.server
            .restart(Duration::from_secs(30), &move || accepting(&bin, port))
            .unwrap_or_else(|e| panic!("PostgreSQL did not restart: {e}"));
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Its backends go with it (a SIGKILL of the postmaster alone would leave them to
        // notice its death).
        self.server.resume();
        self.server.stop(Signal::QUIT, Duration::from_secs(5));
    }
}

/// A PgBouncer in **transaction** pool mode in front of a [`PostgresServer`], on a free
/// loopback port; stopped on drop. It takes the same user and password as the server.
#[derive(Debug)]
pub struct PgBouncer {
    server: Server,
    port: u16,
    _dir: TempDir,
}

impl PgBouncer {
    /// Starts one with a pool of `pool_size` server connections. `None` if `pgbouncer` is not
    /// installed and `CI` is unset.
    ///
    /// # Panics
    ///
    /// When it cannot be started (or, under `CI`, is not installed), with its log.
    pub fn start(postgres: &PostgresServer, pool_size: u32) -> Option<PgBouncer> {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| require_binary("pgbouncer", "pgbouncer"))?;
        let dir = tempfile::tempdir().expect("temp dir for pgbouncer");
        remove_when_gone(dir.path());
        hand_over(dir.path());
        let users = dir.path().join("users.txt");
        std::fs::write(
            &users,
            format!("\"{POSTGRES_USER}\" \"{POSTGRES_PASSWORD}\"\n"),
        )
        .expect("write the auth file");
        hand_over(&users);
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     * = host=127.0.0.1 port={}\n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = scram-sha-256\n\
                     auth_file = {}\n\
                     pool_mode = transaction\n\
                     default_pool_size = {pool_size}\n\
                     max_client_conn = 500\n\
                     ignore_startup_parameters = extra_float_digits,options\n",
                    postgres.port,
                    users.display()
                ),
            )
            .expect("write pgbouncer.ini");
            hand_over(&ini);
            let (program, args) = as_user(&program, vec![ini.display().to_string()]);
            let bin = postgres.bin.clone();
            match Server::spawn(
                "pgbouncer",
                &program,
                args,
                dir.path(),
                Duration::from_secs(10),
                &move || accepting(&bin, port),
            ) {
                Ok(server) => {
                    return Some(PgBouncer {
                        server,
                        port,
                        _dir: dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start pgbouncer: {last_err}");
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://lease:PASSWORD@127.0.0.1:PORT/postgres`, through the pooler.
    pub fn url(&self) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The process.
    pub fn process(&mut self) -> &mut Server {
        &mut self.server
    }
}
