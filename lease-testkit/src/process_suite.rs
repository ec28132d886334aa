//! Lock holders in other processes, the same for every backend: a SIGKILLed holder is replaced
//! within lease + 1 s, and a holder paused past its lease learns of the loss when it resumes.
//!
//! A backend runs the suite with one line at the root of a test crate, naming its lease, a
//! target (what its children need to reach one fresh store: a URL and a key prefix, a database
//! path) and how a process opens the store at that target:
//!
//! ```ignore
//! async fn open(target: String) -> MyStore { MyStore::open(&target).await.unwrap() }
//! lease_testkit::process_conformance_tests!(
//!     lease: Duration::from_secs(1),
//!     target: Some(fresh_database_path()), // `None` skips (no server here)
//!     open: open,
//! );
//! ```
//!
//! The children are the test binary run again ([`std::env::current_exe`]) on the test filter
//! `child --exact`, with their role, target and argument in the environment: the macro's `child`
//! test plays that role, and is a no-op in a normal test run. Besides the `holder` role of the
//! shared cases, a backend can give roles of its own (`roles:`), and write its own cases against
//! the same harness: [`child_command`], [`Holder`], [`run_all`], [`fence_of`].
//!
//! Children report to the parent on stdout, one line per event, marked `@@` ([`report`]):
//! libtest may print its own text before it on the same line.

use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Error, Fence, LeaseStore, LockGuard};
use rustix::process::{Pid, kill_process};
use tokio::sync::mpsc;

pub use rustix::process::Signal;

/// The key every process of a case contends for.
pub const KEY: &str = "job";

/// The child's role; set only in a child.
const ROLE_ENV: &str = "LEASE_TEST_CHILD_ROLE";
/// The child's target, handed to the backend's open function.
const TARGET_ENV: &str = "LEASE_TEST_CHILD_TARGET";
/// The role's argument.
const ARG_ENV: &str = "LEASE_TEST_CHILD_ARG";

/// The marker of an event line.
const EVENT: &str = "@@";

/// Whether this process is a child (the cases return at once in one).
pub fn is_child() -> bool {
    std::env::var_os(ROLE_ENV).is_some()
}

/// Reports `event` to the parent (a child's stdout line, marked as an event).
pub fn report(event: impl Display) {
    println!("{EVENT}{event}");
}

/// The event on a line of a child's output, without its marker.
fn event_of(line: &str) -> Option<&str> {
    line.find(EVENT).map(|i| &line[i + EVENT.len()..])
}

/// The events of a child's whole output, without the marker.
pub fn events(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| event_of(l).map(str::to_owned))
        .collect()
}

/// The last word of an event, as a number (`HELD 7` → 7).
///
/// # Panics
///
/// When it is not one.
pub fn number<T: FromStr>(event: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    event
        .rsplit(' ')
        .next()
        .expect("a number")
        .trim()
        .parse()
        .expect("a number")
}

/// The fence of a `HELD <fence>` event.
///
/// # Panics
///
/// When the event has no positive fence.
pub fn fence_of(event: &str) -> Fence {
    Fence::new(number(event)).expect("positive fence")
}

/// A lock on [`KEY`] in `store` with `lease`, labelled `label` (`child`, `parent`, a role).
///
/// # Panics
///
/// When the builder refuses `lease` for this store.
pub fn lock<S: LeaseStore>(store: S, lease: Duration, label: &str) -> CrossProcessLock<S> {
    CrossProcessLock::builder(store, KEY)
        .lease(lease)
        .holder_label(label)
        .build()
        .expect("lock")
}

/// The command that runs a child playing `role` on `target` with `arg`, its stdout piped.
pub fn child_command(role: &str, target: &str, arg: &str) -> Command {
    wrapped_child_command(&[], role, target, arg)
}

/// [`child_command`] run through `wrapper` (a program and its arguments, which must end by
/// executing the rest of its command line), e.g. `unshare --time --boottime 3600`.
///
/// # Panics
///
/// When the test binary's path is unknown.
pub fn wrapped_child_command(wrapper: &[&str], role: &str, target: &str, arg: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&exe);
            cmd
        }
        None => Command::new(&exe),
    };
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(TARGET_ENV, target)
        .env(ARG_ENV, arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Runs the children to completion, all at once, and returns each one's events.
///
/// # Panics
///
/// When a child cannot be spawned or fails.
pub async fn run_all(cmds: Vec<Command>) -> Vec<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let children: Vec<Child> = cmds
            .into_iter()
            .map(|mut c| c.spawn().expect("spawn a child"))
            .collect();
        children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("child output");
                assert!(out.status.success(), "a child failed: {:?}", out.status);
                events(&out.stdout)
            })
            .collect()
    })
    .await
    .expect("children")
}

/// A long-running child whose events arrive on a channel; killed on drop.
#[derive(Debug)]
pub struct Holder {
    child: Child,
    events: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    /// A child playing the shared `holder` role on `target`: it takes [`KEY`], reports
    /// `HELD <fence>`, and `LOST held=<is_held>` if its loss signal ever fires.
    pub fn spawn(target: &str) -> Holder {
        Self::spawn_command(child_command("holder", target, ""))
    }

    /// Spawns `cmd` (from [`child_command`]) and reads its events.
    ///
    /// # Panics
    ///
    /// When the child cannot be spawned or its stdout is not piped.
    pub fn spawn_command(mut cmd: Command) -> Holder {
        let mut child = cmd.spawn().expect("spawn the child holder");
        let out = child.stdout.take().expect("child stdout");
        let (tx, events) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(event) = event_of(&line) {
                    if tx.send(event.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Holder { child, events }
    }

    /// The child's next event, which must start with `prefix` and come within `within`.
    ///
    /// # Panics
    ///
    /// When it is another event, or the child exits or stays silent first.
    pub async fn expect_line(&mut self, prefix: &str, within: Duration) -> String {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(event)) if event.starts_with(prefix) => event,
            Ok(Some(event)) => panic!("expected `{prefix}` from the child, got `{event}`"),
            Ok(None) => panic!("the child exited before printing `{prefix}`"),
            Err(_) => panic!("the child did not print `{prefix}` within {within:?}"),
        }
    }

    /// Sends `sig` to the child (`KILL`, `STOP`, `CONT`).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid")).expect("child pid");
        kill_process(pid, sig).expect("signal the child");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder roles' body: takes `lock`, reports `HELD <fence>`; when the loss signal fires,
/// reports `LOST held=<is_held>` followed by what `on_lost` returns for the lost fence (the
/// outcome of a fenced write, say); then waits to be killed.
///
/// # Panics
///
/// When the lock is not acquired within 20 s.
pub async fn hold<S: LeaseStore>(lock: CrossProcessLock<S>, on_lost: impl FnOnce(Fence) -> String) {
    let guard = lock
        .lock_timeout(Duration::from_secs(20))
        .await
        .expect("child acquires");
    report(format_args!("HELD {}", guard.fence().get()));
    guard.lost().await;
    let more = on_lost(guard.fence());
    report(format_args!("LOST held={}{more}", guard.is_held()));
    // Stay alive until the parent kills us: the test asserts on what we reported.
    std::future::pending::<()>().await;
}

/// The macro's `child` test: plays the role this child was started with, if it is one. The
/// shared `holder` role opens the store with `open`; any other goes to `roles` (role, target,
/// argument).
///
/// # Panics
///
/// When a child's environment lacks its target.
pub async fn run_child<S, Open, Fut, Roles, RolesFut>(lease: Duration, open: Open, roles: Roles)
where
    S: LeaseStore,
    Open: FnOnce(String) -> Fut,
    Fut: Future<Output = S>,
    Roles: FnOnce(String, String, String) -> RolesFut,
    RolesFut: Future<Output = ()>,
{
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let target = std::env::var(TARGET_ENV).expect("the child's target");
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    match role.as_str() {
        "holder" => hold(lock(open(target).await, lease, "child"), |_| String::new()).await,
        _ => roles(role, target, arg).await,
    }
}

/// The `roles:` of a backend that has none of its own.
///
/// # Panics
///
/// Always: the role is unknown.
pub async fn no_roles(role: String, _target: String, _arg: String) {
    panic!("unknown child role {role}");
}

/// Pauses `holder` (SIGSTOP), waits with `lock` until the paused holder's key is granted (with a
/// fence above `child_fence`), runs `while_paused` with the new guard, resumes the holder
/// (SIGCONT) no sooner than `paused_for` after the pause, and returns the new guard and the
/// holder's `LOST` event.
///
/// # Panics
///
/// When the key is not granted within 15 s, or the holder does not report the loss within 5 s
/// of resuming.
pub async fn replace_paused_holder<S: LeaseStore>(
    holder: &mut Holder,
    child_fence: Fence,
    lock: &CrossProcessLock<S>,
    paused_for: Duration,
    while_paused: impl FnOnce(&LockGuard<S>),
) -> (LockGuard<S>, String) {
    // Stopped once every thread is: its pause (and so `paused_for`) starts there.
    crate::pause_process(holder.child.id());
    let stopped_at = Instant::now();
    let guard = lock
        .lock_timeout(Duration::from_secs(15))
        .await
        .expect("the key of a paused holder expires");
    assert!(
        guard.fence() > child_fence,
        "the new grant has a larger fence"
    );
    while_paused(&guard);
    tokio::time::sleep(paused_for.saturating_sub(stopped_at.elapsed())).await;
    holder.signal(Signal::CONT);
    let lost = holder.expect_line("LOST", Duration::from_secs(5)).await;
    (guard, lost)
}

/// What each shared case starts from: a child holding [`KEY`] on one target (in the shared
/// `holder` role), its fence, and the parent's lock on the same store.
#[derive(Debug)]
pub struct Case<S: LeaseStore> {
    holder: Holder,
    child_fence: Fence,
    lock: CrossProcessLock<S>,
    lease: Duration,
}

impl<S: LeaseStore> Case<S> {
    /// Starts the holder on `target` and waits until it holds the key; opens the parent's store
    /// there with `open`.
    ///
    /// # Panics
    ///
    /// When the holder does not report its grant within 20 s.
    pub async fn start<Fut>(target: &str, lease: Duration, open: impl FnOnce(String) -> Fut) -> Self
    where
        Fut: Future<Output = S>,
    {
        let mut holder = Holder::spawn(target);
        let child_fence = fence_of(&holder.expect_line("HELD", Duration::from_secs(20)).await);
        let lock = lock(open(target.to_owned()).await, lease, "parent");
        Case {
            holder,
            child_fence,
            lock,
            lease,
        }
    }
}

/// A SIGKILLed holder's key is taken by a waiting process within lease + 1 s of the kill, with a
/// larger fence; while the holder lived, its heartbeat kept the key.
///
/// # Panics
///
/// When it is not so.
pub async fn killed_holder_process_is_replaced_within_lease_plus_one_second<S: LeaseStore>(
    case: Case<S>,
) {
    let Case {
        holder,
        child_fence,
        lock,
        lease,
    } = case;
    assert!(matches!(
        lock.try_lock_once().await,
        Err(Error::Busy { .. })
    ));
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let g = lock.lock_timeout(Duration::from_secs(30)).await;
            (g, Instant::now())
        })
    };
    // Let the child's heartbeat run past its first lease, with us waiting for the key.
    tokio::time::sleep(lease * 2).await;
    assert!(!waiter.is_finished(), "the child still renews its lease");
    holder.signal(Signal::KILL);
    let killed_at = Instant::now();
    let (guard, at) = waiter.await.expect("waiter");
    let guard = guard.expect("the waiter acquires after the kill");
    let took = at.saturating_duration_since(killed_at);
    println!("a SIGKILLed holder's key was taken {took:?} after the kill (lease {lease:?})");
    assert!(
        took <= lease + Duration::from_secs(1),
        "another process must acquire within lease + 1 s of the kill, took {took:?}"
    );
    assert!(guard.fence() > child_fence);
    guard.release().await.expect("release");
}

/// A holder paused (SIGSTOP) past its lease is replaced by another process with a larger fence,
/// learns of the loss when it resumes, and does not take the key back.
///
/// # Panics
///
/// When it is not so.
pub async fn paused_holder_is_replaced_and_learns_of_the_loss_on_resume<S: LeaseStore>(
    mut case: Case<S>,
) {
    let (guard, _lost) = replace_paused_holder(
        &mut case.holder,
        case.child_fence,
        &case.lock,
        Duration::ZERO,
        |_| {},
    )
    .await;
    assert!(
        guard.is_held(),
        "the resumed holder did not take the key back"
    );
    guard.release().await.expect("release");
}

/// Stamps out the process-fault suite for a backend: the `child` test that plays the children's
/// roles, and one `#[tokio::test]` per shared case in [`process_suite`](crate::process_suite),
/// named as the case.
///
/// - `lease:` the locks' lease (a [`Duration`](std::time::Duration) the store accepts);
/// - `target:` an expression evaluated once per case to `Option<T>`, `T: AsRef<str>`: where that
///   case's processes find one fresh store (it lives as long as the case; `None` skips it);
/// - `open:` an `async fn(String) -> Store` (or closure) opening the store at a target, in the
///   parent and in each child;
/// - `roles:` (optional) an `async fn(role, target, arg)` playing the backend's own child roles.
///
/// Invoke it at the root of a test crate: the children are started on the test filter
/// `child --exact`.
#[macro_export]
macro_rules! process_conformance_tests {
    (@cases $lease:expr, $target:expr, $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if $crate::process_suite::is_child() {
                    return;
                }
                let Some(target) = $target else { return };
                let target: &str = ::std::convert::AsRef::<str>::as_ref(&target);
                let case = $crate::process_suite::Case::start(target, $lease, $open).await;
                $crate::process_suite::$case(case).await;
            }
        )*
    };
    (lease: $lease:expr, target: $target:expr, open: $open:expr $(,)?) => {
        $crate::process_conformance_tests!(
            lease: $lease,
            target: $target,
            open: $open,
            roles: $crate::process_suite::no_roles,
        );
    };
    (lease: $lease:expr, target: $target:expr, open: $open:expr, roles: $roles:expr $(,)?) => {
        /// The child roles (this binary run again by a case); a no-op in a normal test run.
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn child() {
            $crate::process_suite::run_child($lease, $open, $roles).await;
        }

        $crate::process_conformance_tests!(@cases $lease, $target, $open;
            killed_holder_process_is_replaced_within_lease_plus_one_second,
            paused_holder_is_replaced_and_learns_of_the_loss_on_resume,
        );
    };
}
