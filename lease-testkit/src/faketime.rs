//! A process's wall clock stepped while it runs: libfaketime, preloaded, reading its offset from
//! a file that [`set_offset`] replaces.
//!
//! Only the wall clock moves (`CLOCK_REALTIME`: `time`, `gettimeofday`, Redis's `TIME`); the
//! monotonic and boot clocks stay real, as with an NTP step on a real host. A small preload
//! shim, built with `cc` on first use and loaded before libfaketime, answers every other clock
//! and every sleep on them from the kernel directly (`SHIM` in the source says which two faults
//! of libfaketime 0.9.10 it works around).

use std::path::Path;

use crate::process::require_binary;

/// Where Debian and others install libfaketime's multi-threaded preload library.
const LIBRARIES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/lib64/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
];

/// The preload shim, loaded before libfaketime.
///
/// - libfaketime 0.9.10 deadlocks in a redis-server that uses the system's jemalloc (Debian's
///   does): jemalloc's initialisation reads the monotonic clock and initialises a condition
///   variable, libfaketime's wrappers of both initialise libfaketime lazily, which calls
///   `dlsym`, which allocates, which waits on jemalloc's initialisation lock. The shim answers
///   those two calls without libfaketime (the monotonic clock is not faked anyway), so
///   libfaketime first initialises from the program's own code.
/// - With the monotonic clocks left alone (`DONT_FAKE_MONOTONIC`), libfaketime 0.9.10 fails
///   every `clock_nanosleep` on them with an absolute deadline (`EINVAL`): glibc's own sleeps
///   and Python's `time.sleep` use it. The shim makes those sleeps on the kernel directly.
const SHIM: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
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
static int (*next_clock_nanosleep)(clockid_t, int, const struct timespec *, struct timespec *);
int clock_nanosleep(clockid_t id, int flags, const struct timespec *req, struct timespec *rem) {
    if (id != CLOCK_REALTIME) {
        /* clock_nanosleep returns the error number instead of setting errno. */
        int saved = errno;
        long r = syscall(SYS_clock_nanosleep, id, flags, req, rem);
        int err = r == -1 ? errno : 0;
        errno = saved;
        return err;
    }
    if (!next_clock_nanosleep)
        next_clock_nanosleep = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT, "clock_nanosleep");
    return next_clock_nanosleep(id, flags, req, rem);
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

/// `LD_PRELOAD` for a process under libfaketime: the shim (built into `dir`) and the library.
///
/// # Errors
///
/// What is missing (libfaketime, `cc`) or why the shim did not build, naming the package to
/// install.
pub fn preload(dir: &Path) -> Result<String, String> {
    let library = LIBRARIES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "libfaketime is not installed (looked for {}): install the Debian package \
                 `faketime`",
                LIBRARIES.join(", ")
            )
        })?;
    let cc = crate::process::find_binary("cc")
        .ok_or("no C compiler `cc` to build the faketime shim: install the Debian package `gcc`")?;
    let source = dir.join("faketime-shim.c");
    let shim = dir.join("faketime-shim.so");
    std::fs::write(&source, SHIM)
        .map_err(|e| format!("write the faketime shim {}: {e}", source.display()))?;
    let out = std::process::Command::new(cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("run cc to build the faketime shim: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the faketime shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(format!("{}:{}", shim.display(), library.display()))
}

/// [`preload`] for a test: `None` (with a note) when libfaketime or `cc` is missing and `CI` is
/// unset.
///
/// # Panics
///
/// Under `CI` when either is missing, and when the shim does not build.
pub(crate) fn preload_or_skip(dir: &Path) -> Option<String> {
    require_binary("cc", "gcc")?;
    match preload(dir) {
        Ok(p) => Some(p),
        Err(why) if why.starts_with("libfaketime is not installed") => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{why} (CI is set; scripts/test.sh installs it)"
            );
            eprintln!("skipping: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

/// The environment of a process under libfaketime whose wall clock is offset by the number in
/// `file` (see [`set_offset`]), re-read on every reading of the wall clock.
pub fn env(preload: &str, file: &Path) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", preload.to_owned()),
        ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_owned()),
        ("DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets the wall clock of the processes reading `file` to the real one plus `offset_secs`
/// (negative: behind), at once: the file is written beside and renamed into place, so no
/// process reads it half-written.
///
/// # Errors
///
/// The file cannot be written or renamed.
pub fn set_offset(file: &Path, offset_secs: i64) -> std::io::Result<()> {
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, format!("{offset_secs:+}\n"))?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process under [`env`] reads the stepped wall clock, its monotonic clock stays real, and
    /// its sleeps on the monotonic clock work (libfaketime alone fails them with `EINVAL`).
    #[test]
    fn a_stepped_process_reads_the_offset_wall_clock_and_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let Some(preload) = preload_or_skip(dir.path()) else {
            return;
        };
        let Some(python) = require_binary("python3", "python3") else {
            return;
        };
        let file = dir.path().join("clock");
        set_offset(&file, -3600).unwrap();
        let script = "import time\n\
                      m = time.monotonic(); time.sleep(0.05)\n\
                      print(int(time.time()), time.monotonic() - m >= 0.05)";
        let read = || {
            let out = std::process::Command::new(&python)
                .args(["-c", script])
                .envs(env(&preload, &file))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            let (secs, slept) = text.trim().split_once(' ').unwrap();
            let real = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            (secs.parse::<i64>().unwrap() - real, slept.to_owned())
        };
        let (behind, slept) = read();
        assert!((-3605..=-3595).contains(&behind), "{behind}");
        assert_eq!(slept, "True");
        set_offset(&file, 0).unwrap();
        let (off, _) = read();
        assert!((-5..=5).contains(&off), "{off}");
    }
}
