//! Refusing filesystems on which the store cannot keep its promises: network and cluster
//! filesystems (no shared memory for WAL between hosts, and another host's boot clock means
//! nothing here).

use std::path::{Path, PathBuf};

use lease_core::StoreError;

use crate::NAME;

/// `statfs` magic numbers of network and cluster filesystems.
const NETWORK: &[(u64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x0102_1997, "9p"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "kAFS"),
    (0x564C, "NCP"),
    (0x7375_7245, "Coda"),
    (0x0BD0_0BD0, "Lustre"),
    (0x0116_1970, "GFS2"),
    (0x7461_636F, "OCFS2"),
    (0x00C3_6400, "CephFS"),
    (0x2003_0528, "OrangeFS"),
    (0x786F_4256, "VirtualBox shared folder"),
];

/// `statfs` magic of every FUSE filesystem; which one it is shows in `/proc/self/mountinfo`.
const FUSE: u64 = 0x6573_5546;

/// FUSE filesystems (the `fuse.<name>` or `fuseblk.<name>` type) that reach other hosts.
const NETWORK_FUSE: &[&str] = &[
    "sshfs",
    "s3fs",
    "gcsfuse",
    "rclone",
    "glusterfs",
    "ceph-fuse",
    "juicefs",
    "mfs",
    "moosefs",
    "lizardfs",
    "seaweedfs",
    "goofys",
    "blobfuse",
    "blobfuse2",
    "davfs",
    "curlftpfs",
    "smbnetfs",
    "afpfs",
    "cvmfs",
];

/// Refuses the database `db` (an absolute path) if its directory, or the directory of the file
/// it really is after following symlinks, is on a network or cluster filesystem that `statfs`
/// (and for FUSE, `/proc/self/mountinfo`) identifies. SQLite follows a symlinked database to
/// its target and keeps the WAL and its shared memory next to it, so the target's filesystem
/// is the one that counts; the wake-up files live next to the path as given. Anything it cannot
/// tell is let through: the open that follows reports real problems.
pub(crate) fn refuse_network_fs(db: &Path) -> Result<(), StoreError> {
    refuse_with(db, network_fs)
}

fn refuse_with(db: &Path, network_fs: impl Fn(&Path) -> Option<String>) -> Result<(), StoreError> {
    let given = parent_of(db);
    let real = real_path(db);
    let real_dir = parent_of(&real);
    for dir in [&given, &real_dir] {
        if let Some(name) = network_fs(dir) {
            let through = if real == db {
                String::new()
            } else {
                format!(
                    " (the database {} is a symlink to {})",
                    db.display(),
                    real.display()
                )
            };
            return Err(StoreError::permanent(
                NAME,
                format!(
                    "{} is on a {name} network filesystem{through}; the SQLite store works only \
                     on a local filesystem shared by processes of one host",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The file `path` (absolute) really is: symlinks followed, also a dangling one (SQLite
/// creates the database at its target), and the directory's own symlinks resolved when it
/// exists. A loop of symlinks stops after 40 steps, like the kernel's.
fn real_path(path: &Path) -> PathBuf {
    let mut p = path.to_owned();
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&p) else {
            break;
        };
        p = parent_of(&p).join(target);
    }
    match (p.parent().map(Path::canonicalize), p.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => p,
    }
}

/// The name of the network or cluster filesystem `dir` is on, if it is one.
fn network_fs(dir: &Path) -> Option<String> {
    let fs = rustix::fs::statfs(dir).ok()?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // f_type's type varies
    let kind = (fs.f_type as i64 as u64) & 0xFFFF_FFFF;
    if kind == FUSE {
        fuse_type(dir).and_then(|t| {
            let sub = t.split_once('.').map_or("", |(_, sub)| sub);
            NETWORK_FUSE.contains(&sub).then(|| format!("FUSE {sub}"))
        })
    } else {
        NETWORK
            .iter()
            .find(|(magic, _)| *magic == kind)
            .map(|(_, name)| (*name).to_owned())
    }
}

/// The filesystem type (e.g. `fuse.sshfs`) of the mount holding `dir`, from
/// `/proc/self/mountinfo`: the mount whose mount point is the longest prefix of `dir`.
fn fuse_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type_of(&info, &dir)
}

fn mount_type_of(mountinfo: &str, dir: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional...] - type source super`
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            continue;
        };
        let Some(fs_type) = after.split(' ').next() else {
            continue;
        };
        let mount_point = unescape(mount_point);
        let len = mount_point.len();
        if Path::new(&mount_point).is_absolute()
            && dir.starts_with(&mount_point)
            && best.as_ref().is_none_or(|(l, _)| len >= *l)
        {
            best = Some((len, fs_type.to_owned()));
        }
    }
    best.map(|(_, t)| t)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /mnt/remote rw,nosuid,nodev shared:20 - fuse.sshfs user@host:/srv rw,user_id=0
41 40 0:36 / /mnt/remote/local\\040dir rw shared:21 - tmpfs tmpfs rw
";

    #[test]
    fn the_longest_mount_point_prefix_wins() {
        assert_eq!(
            mount_type_of(INFO, Path::new("/mnt/remote/x/locks")).as_deref(),
            Some("fuse.sshfs")
        );
        assert_eq!(
            mount_type_of(INFO, Path::new("/mnt/remote/local dir/a")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            mount_type_of(INFO, Path::new("/mnt/remotely")).as_deref(),
            Some("ext4"),
            "a mount point is a path prefix, not a string prefix"
        );
    }

    #[test]
    fn the_local_temp_dir_is_accepted() {
        let dir = tempfile::tempdir().expect("temp dir");
        refuse_network_fs(&dir.path().join("locks.db")).expect("a local filesystem");
    }

    /// A database path that is a symlink (on a local filesystem) into another directory is
    /// checked where its file really is: symlinks followed, relative, chained, dangling (SQLite
    /// creates the file at the target), or through a symlinked directory.
    #[test]
    fn a_symlinked_database_is_checked_where_its_file_really_is() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let (local, remote) = (root.join("local"), root.join("remote"));
        std::fs::create_dir_all(&local).unwrap();
        std::fs::create_dir_all(remote.join("sub")).unwrap();
        std::fs::write(remote.join("real.db"), "").unwrap();
        // Existing target, relative link.
        symlink("../remote/real.db", local.join("rel.db")).unwrap();
        // A chain of two links, the last absolute.
        symlink(remote.join("real.db"), local.join("abs.db")).unwrap();
        symlink("abs.db", local.join("chain.db")).unwrap();
        // Dangling: SQLite would create remote/sub/new.db.
        symlink(remote.join("sub/new.db"), local.join("dangling.db")).unwrap();
        // Through a symlinked directory.
        symlink(&remote, local.join("dir")).unwrap();

        let cases = [
            ("rel.db", remote.join("real.db")),
            ("abs.db", remote.join("real.db")),
            ("chain.db", remote.join("real.db")),
            ("dangling.db", remote.join("sub/new.db")),
            ("dir/x.db", remote.join("x.db")),
            ("plain.db", local.join("plain.db")),
        ];
        // Pretend that `remote` is an NFS mount and `local` a local filesystem.
        let nfs = |dir: &Path| dir.starts_with(&remote).then(|| "NFS".to_owned());
        for (name, real) in cases {
            let db = local.join(name);
            assert_eq!(real_path(&db), real, "{name}");
            let verdict = refuse_with(&db, nfs);
            if real.starts_with(&remote) {
                let msg = verdict.expect_err(name).to_string();
                assert!(msg.contains("NFS network filesystem"), "{name}: {msg}");
            } else {
                verdict.expect(name);
            }
        }
        let msg = refuse_with(&local.join("rel.db"), nfs)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!(
                "{} is a symlink to",
                local.join("rel.db").display()
            )),
            "the error names the link and its target: {msg}"
        );

        // A loop of symlinks ends; the open that follows reports it.
        symlink("loop-b.db", local.join("loop-a.db")).unwrap();
        symlink("loop-a.db", local.join("loop-b.db")).unwrap();
        refuse_with(&local.join("loop-a.db"), nfs).expect("not on the fake NFS");
    }
}
