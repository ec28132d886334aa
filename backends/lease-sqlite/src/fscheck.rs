//! Refusing filesystems on which the store cannot keep its promises: network and cluster
//! filesystems (no shared memory for WAL between hosts, and another host's boot clock means
//! nothing here).

use std::path::Path;

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

/// Refuses `dir` if it is on a network or cluster filesystem that `statfs` (and for FUSE,
/// `/proc/self/mountinfo`) identifies. Anything it cannot tell is let through: the open that
/// follows reports real problems.
pub(crate) fn refuse_network_fs(dir: &Path) -> Result<(), StoreError> {
    let Ok(fs) = rustix::fs::statfs(dir) else {
        return Ok(());
    };
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // f_type's type varies
    let kind = (fs.f_type as i64 as u64) & 0xFFFF_FFFF;
    let name = if kind == FUSE {
        fuse_type(dir).and_then(|t| {
            let sub = t.split_once('.').map_or("", |(_, sub)| sub);
            NETWORK_FUSE.contains(&sub).then(|| format!("FUSE {sub}"))
        })
    } else {
        NETWORK
            .iter()
            .find(|(magic, _)| *magic == kind)
            .map(|(_, name)| (*name).to_owned())
    };
    match name {
        Some(name) => Err(StoreError::permanent(
            NAME,
            format!(
                "{} is on a {name} network filesystem; the SQLite store works only on a local \
                 filesystem shared by processes of one host",
                dir.display()
            ),
        )),
        None => Ok(()),
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
        refuse_network_fs(dir.path()).expect("a local filesystem");
    }
}
