//! Volumes of files the agent writes for pods (config maps, secrets, the downward API), shared
//! by both runtimes: where they live, how they are checked, and the atomic writer.
//!
//! **Layout** (Kubernetes' `AtomicWriter`). A volume's directory holds its files in a data
//! directory named after the time it was written, a symbolic link `..data` to it, and one
//! link per top-level entry through `..data`:
//!
//! ```text
//! <volume>/..2026_01_31_12_00_00.123456789/app.conf    the files and their sub directories
//! <volume>/..2026_01_31_12_00_00.123456789/dir/key
//! <volume>/..data -> ..2026_01_31_12_00_00.123456789
//! <volume>/app.conf -> ..data/app.conf
//! <volume>/dir -> ..data/dir
//! ```
//!
//! Every link is relative, so it resolves inside a container's bind mount of the volume too.
//! **An update** ([`write_volume`]) first compares the content with what is there (same paths,
//! data and modes: nothing is written at all); otherwise it writes a new data directory
//! completely (fsynced when the volume is on disk; not for RAM-backed storage), makes
//! `..data_tmp` point at it and renames that over `..data` (one atomic step), then adds and
//! removes the top-level links that changed, then deletes the old data directory. A reader
//! that opens a file gets one version of it whole; one that resolves `..data` once and reads
//! several files from there gets them all of one version. Writes of one volume are serialised
//! by the runtime (one writer at a time).
//!
//! **Checks** (`validate_pod_volumes`, run by `start_pod` through `validate_spec`, and again
//! by the writer): volume names are DNS-1123 labels, unique in the pod; a file's path is
//! relative, not empty, has no empty, `.` or `..` part, does not start with `..` (which would
//! meet `..data`), at most [`MAX_PATH_BYTES`] bytes with parts of at most 255; no path is
//! another's directory; modes are at most `0o777` (no set-id bits). **Limits**: a volume has
//! at most [`MAX_VOLUME_FILES`] files and [`MAX_VOLUME_BYTES`] of data (Kubernetes caps one
//! config map or secret at 1 MiB; a projection may combine a few), a pod at most
//! [`MAX_POD_VOLUMES`] volumes and [`MAX_POD_VOLUME_BYTES`] in all, which bounds what a pod can
//! make the agent hold in RAM. A mount names one of the pod's volumes, its path is absolute
//! with no `.` or `..` part and unique in its container, its `sub_path` follows the rules of
//! a file's path; `sensitive_env` names variables `env` sets.
//!
//! **Where volumes live** (`VolumeStore`). Volumes without secrets under the runtime's pod
//! directories in the agent's data dir (process: `<data_dir>/pods/<uid>/volumes/<name>/`;
//! Docker: `<data_dir>/docker/pods/<uid>/volumes/<name>/`). Sensitive ones only in RAM-backed
//! storage: the first of `$XDG_RUNTIME_DIR`, `/dev/shm` and `/run` that `statfs` says is tmpfs
//! or ramfs (or [`RuntimeConfig::ram_dir`]), under `shoal-<id>/pods/<uid>/volumes/<name>/`,
//! where `<id>` is a hash of the runtime kind, the cluster and node ids and the data dir (one
//! agent's, stable across its restarts). `shoal-<id>` must be a directory of the agent's user
//! (not a link: `/dev/shm` is shared by every user), and it and everything down to the
//! volumes are 0700, so only the agent's user reaches the files from the host. Inside a
//! volume, directories are 0755 and files have their modes, so that a container's user reads
//! them through its bind mount as in Kubernetes. With no RAM-backed storage a pod with secret
//! data fails to start ([`RuntimeError::Secret`]): secrets never fall back to disk. `shoal-<id>`
//! holds a file `data-dir` naming the agent's data dir, so that what an agent that will not
//! come back left in RAM can be found and removed (`shoal up` stopping a cluster does).
//!
//! **Scratch volumes and host paths** are not written by the agent. A scratch volume
//! ([`super::ScratchVolume`]) is a directory `scratch/<name>/` next to `volumes/`, in the
//! pod's directory on disk or (`memory`) in its RAM-backed one, made empty with mode 0777 at
//! the start; its usage is counted for [`super::PodInfo::scratch_bytes`] by a walk that never
//! follows links and stops past the limit or after [`MAX_SCRATCH_ENTRIES`] entries. A host
//! path ([`super::HostPathVolume`]) is absolute with no `..` part and checked at the start
//! ([`super::HostPathCheck`]). Scratch and host path volume names are DNS-1123 labels, unique
//! together with the volumes of files, and count towards [`MAX_POD_VOLUMES`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;
use tracing::{debug, warn};

use super::{
    HostPathCheck, HostPathVolume, PodSpec, RuntimeConfig, RuntimeError, RuntimeKind, VolumeFile,
    VolumeSpec,
};

/// At most this many files in one volume.
pub const MAX_VOLUME_FILES: usize = 1000;
/// At most this many bytes of file data in one volume (4 MiB).
pub const MAX_VOLUME_BYTES: usize = 4 * 1024 * 1024;
/// At most this many volumes in one pod.
pub const MAX_POD_VOLUMES: usize = 64;
/// At most this many bytes of file data in all of a pod's volumes (16 MiB).
pub const MAX_POD_VOLUME_BYTES: usize = 16 * 1024 * 1024;
/// At most this many bytes in a file's path inside its volume (and in a `sub_path`).
pub const MAX_PATH_BYTES: usize = 1024;
/// At most this many bytes in one part of a path (the file system's `NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;
/// Permission bits a file may have.
const MAX_MODE: u32 = 0o777;

/// At most this many entries of a scratch volume are looked at to tell its size
/// ([`super::PodInfo::scratch_bytes`]).
pub const MAX_SCRATCH_ENTRIES: usize = 100_000;
/// Mode of a scratch volume's directory: any container user may write (as Kubernetes'
/// `emptyDir`).
const SCRATCH_DIR_MODE: u32 = 0o777;

/// The link to the current data directory.
pub const DATA_LINK: &str = "..data";
/// The link renamed over [`DATA_LINK`].
const DATA_TMP_LINK: &str = "..data_tmp";
/// Mode of the directories inside a volume.
const VOLUME_DIR_MODE: u32 = 0o755;
/// Mode of the directories above the volumes (and of the pods' RAM directories).
const PRIVATE_DIR: u32 = 0o700;
/// Filesystem magic numbers (`statfs(2)`).
const TMPFS_MAGIC: u32 = 0x0102_1994;
const RAMFS_MAGIC: u32 = 0x8584_58f6;

fn invalid(message: String) -> RuntimeError {
    RuntimeError::InvalidSpec(message)
}

fn io_error(context: &str, path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::io(format!("{context} {}", path.display()), e)
}

/// Whether `s` is a DNS-1123 label: 1-63 of `a-z`, `0-9`, `-`, starting and ending with a
/// letter or digit.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Why `path` is not a valid relative path inside a volume (a file's or a `sub_path`), if it
/// is not.
fn bad_relative_path(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Some("it is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Some("it is absolute");
    }
    if path.starts_with("..") {
        return Some("it starts with '..'");
    }
    if path.contains('\0') {
        return Some("it holds a NUL byte");
    }
    for part in path.split('/') {
        match part {
            "" => return Some("it has an empty part"),
            "." | ".." => return Some("it has a '.' or '..' part"),
            p if p.len() > MAX_NAME_BYTES => return Some("a part is longer than 255 bytes"),
            _ => {}
        }
    }
    None
}

/// Checks a volume's files: paths ([`bad_relative_path`]), no path another's directory, no
/// path twice, modes, and the limits.
pub(crate) fn validate_files(volume: &str, files: &[VolumeFile]) -> Result<(), RuntimeError> {
    if files.len() > MAX_VOLUME_FILES {
        return Err(invalid(format!(
            "volume {volume:?} has {} files, more than the {MAX_VOLUME_FILES} allowed",
            files.len()
        )));
    }
    let bytes: usize = files.iter().map(|f| f.data.len()).sum();
    if bytes > MAX_VOLUME_BYTES {
        return Err(invalid(format!(
            "volume {volume:?} holds {bytes} bytes, more than the {MAX_VOLUME_BYTES} allowed"
        )));
    }
    let mut paths = BTreeSet::new();
    for f in files {
        if let Some(why) = bad_relative_path(&f.path) {
            return Err(invalid(format!(
                "volume {volume:?}: file path {:?} is not allowed: {why}",
                f.path
            )));
        }
        if f.mode > MAX_MODE {
            return Err(invalid(format!(
                "volume {volume:?}: file {:?} has mode {:#o}; at most 0o777 is allowed",
                f.path, f.mode
            )));
        }
        if !paths.insert(f.path.as_str()) {
            return Err(invalid(format!(
                "volume {volume:?} has the file {:?} twice",
                f.path
            )));
        }
    }
    // In sorted order a directory comes right before the paths under it ('/' sorts low, but a
    // sibling like "a.b" may come between "a" and "a/b": check every later path that shares
    // the prefix).
    let sorted: Vec<&str> = paths.into_iter().collect();
    for (i, p) in sorted.iter().enumerate() {
        for q in sorted[i + 1..].iter().take_while(|q| q.starts_with(p)) {
            if q.as_bytes().get(p.len()) == Some(&b'/') {
                return Err(invalid(format!(
                    "volume {volume:?}: {p:?} is a file and the directory of {q:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Whether `name` is a usable environment variable name.
fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// Checks a pod's volumes and its containers' mounts and environment names (see the module
/// docs for the rules and limits).
pub(crate) fn validate_pod_volumes(pod: &PodSpec) -> Result<(), RuntimeError> {
    let where_ = || format!("pod {}/{}", pod.namespace, pod.name);
    if pod.volumes.len() > MAX_POD_VOLUMES {
        return Err(invalid(format!(
            "{} has {} volumes, more than the {MAX_POD_VOLUMES} allowed",
            where_(),
            pod.volumes.len()
        )));
    }
    let total: usize = pod
        .volumes
        .iter()
        .flat_map(|v| &v.files)
        .map(|f| f.data.len())
        .sum();
    if total > MAX_POD_VOLUME_BYTES {
        return Err(invalid(format!(
            "{}: its volumes hold {total} bytes, more than the {MAX_POD_VOLUME_BYTES} allowed",
            where_()
        )));
    }
    let mut names = BTreeSet::new();
    for v in &pod.volumes {
        if !is_dns_label(&v.name) {
            return Err(invalid(format!(
                "{}: volume name {:?} must be a DNS-1123 label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                where_(),
                v.name
            )));
        }
        if !names.insert(v.name.as_str()) {
            return Err(invalid(format!(
                "{} has two volumes named {:?}",
                where_(),
                v.name
            )));
        }
        validate_files(&v.name, &v.files)?;
    }
    let other_names = pod
        .scratch
        .iter()
        .map(|s| s.name.as_str())
        .chain(pod.host_paths.iter().map(|h| h.name.as_str()));
    for name in other_names {
        if !is_dns_label(name) {
            return Err(invalid(format!(
                "{}: volume name {name:?} must be a DNS-1123 label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                where_()
            )));
        }
        if !names.insert(name) {
            return Err(invalid(format!(
                "{} has two volumes named {name:?}",
                where_()
            )));
        }
    }
    if pod.volumes.len() + pod.scratch.len() + pod.host_paths.len() > MAX_POD_VOLUMES {
        return Err(invalid(format!(
            "{} has more than the {MAX_POD_VOLUMES} volumes allowed",
            where_()
        )));
    }
    for h in &pod.host_paths {
        let path = Path::new(&h.path);
        if !path.is_absolute()
            || h.path.contains('\0')
            || h.path.len() > 4096
            || path.components().any(|c| c == Component::ParentDir)
        {
            return Err(invalid(format!(
                "{}: host path {:?} of volume {:?} must be an absolute path with no '..' part",
                where_(),
                h.path,
                h.name
            )));
        }
    }
    for c in &pod.containers {
        let mut paths = BTreeSet::new();
        for m in &c.mounts {
            if !names.contains(m.volume.as_str()) {
                return Err(invalid(format!(
                    "container {:?} mounts volume {:?}, which {} does not have",
                    c.name,
                    m.volume,
                    where_()
                )));
            }
            let path = Path::new(&m.mount_path);
            let clean = path.is_absolute()
                && m.mount_path.len() <= 4096
                && !m.mount_path.contains('\0')
                && path.components().count() > 1
                && path
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
                && !m.mount_path.split('/').skip(1).any(|p| p == ".");
            if !clean {
                return Err(invalid(format!(
                    "container {:?}: mount path {:?} must be an absolute path other than / with no '.' or '..' part",
                    c.name, m.mount_path
                )));
            }
            if !paths.insert(path.components().collect::<PathBuf>()) {
                return Err(invalid(format!(
                    "container {:?} mounts two volumes at {:?}",
                    c.name, m.mount_path
                )));
            }
            if let Some(sub) = &m.sub_path {
                if let Some(why) = bad_relative_path(sub) {
                    return Err(invalid(format!(
                        "container {:?}: sub path {sub:?} of volume {:?} is not allowed: {why}",
                        c.name, m.volume
                    )));
                }
            }
        }
        for name in c.sensitive_env.iter().chain(&c.pod_ip_env) {
            if !is_env_name(name) {
                return Err(invalid(format!(
                    "container {:?}: {name:?} is not a variable name",
                    c.name
                )));
            }
        }
        if let Some(name) = c
            .sensitive_env
            .iter()
            .find(|n| !c.env.iter().any(|(k, _)| k == *n))
        {
            return Err(invalid(format!(
                "container {:?}: sensitive variable {name:?} is not in its environment",
                c.name
            )));
        }
    }
    Ok(())
}

/// Creates `dir` (not its parents) with `mode`, or takes it as it is; either way sets `mode`
/// (the umask narrows what `mkdir` gives).
fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Creates `dir` and its missing parents with mode 0700 (the parents only when missing: an
/// existing one keeps its mode), and sets 0700 on `dir`.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The data directory `..data` names, if it names one of ours.
fn current_data(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join(DATA_LINK)).ok()?;
    let name = target.to_str()?;
    (name.starts_with("..") && !name.contains('/') && dir.join(name).is_dir())
        .then(|| name.to_string())
}

/// Whether the data directory `data` holds exactly `files` (same paths, data and modes).
fn same_content(data: &Path, files: &[VolumeFile]) -> bool {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        for entry in entries {
            let Ok(entry) = entry else { return false };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return false;
            };
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    if !walk(&entry.path(), &rel, out) {
                        return false;
                    }
                }
                Ok(t) if t.is_file() => {
                    out.insert(rel, entry.path());
                }
                _ => return false,
            }
        }
        true
    }
    let mut found = BTreeMap::new();
    if !walk(data, "", &mut found) || found.len() != files.len() {
        return false;
    }
    files.iter().all(|f| {
        let Some(path) = found.get(&f.path) else {
            return false;
        };
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return false;
        };
        meta.permissions().mode() & 0o7777 == f.mode
            && meta.len() == f.data.len() as u64
            && std::fs::read(path).is_ok_and(|d| d == f.data)
    })
}

/// A new, unique data directory name for now: `..YYYY_MM_DD_hh_mm_ss.nnnnnnnnn` (UTC).
fn new_data_name(dir: &Path) -> String {
    let now = time::OffsetDateTime::now_utc();
    let base = format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    );
    let mut name = base.clone();
    let mut n = 0;
    while std::fs::symlink_metadata(dir.join(&name)).is_ok() {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

/// Writes the files into the new data directory `data`, with their sub directories and modes.
fn write_data(data: &Path, files: &[VolumeFile], durable: bool) -> std::io::Result<()> {
    let mut dirs = vec![data.to_path_buf()];
    for f in files {
        let path = data.join(&f.path);
        let parent = path.parent().unwrap_or(data);
        if !parent.is_dir() {
            // The parts below `data`, one by one, each 0755.
            let mut at = data.to_path_buf();
            let rel = parent.strip_prefix(data).unwrap_or(Path::new(""));
            for part in rel.components() {
                at.push(part);
                if !at.is_dir() {
                    make_dir(&at, VOLUME_DIR_MODE)?;
                    dirs.push(at.clone());
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)?;
        file.write_all(&f.data)?;
        // Exactly its mode, whatever the umask took away.
        file.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
        if durable {
            file.sync_all()?;
        }
    }
    if durable {
        for dir in dirs.iter().rev() {
            fsync_dir(dir)?;
        }
    }
    Ok(())
}

/// The top-level entries of `files` (the first part of each path).
fn top_level(files: &[VolumeFile]) -> BTreeSet<&str> {
    files
        .iter()
        .map(|f| f.path.split('/').next().unwrap_or(&f.path))
        .collect()
}

/// Makes the volume's top-level links `name -> ..data/name` for `files`, and removes the
/// links of entries they no longer have.
fn sync_links(dir: &Path, files: &[VolumeFile]) -> std::io::Result<()> {
    let wanted = top_level(files);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..") || wanted.contains(name) {
            continue;
        }
        if entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        } else {
            warn!(path = %entry.path().display(), "a volume holds an entry the agent did not make; left alone");
        }
    }
    for name in wanted {
        let link = dir.join(name);
        let target = PathBuf::from(DATA_LINK).join(name);
        match std::fs::read_link(&link) {
            Ok(existing) if existing == target => continue,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink(&target, &link)?;
    }
    Ok(())
}

/// Removes every data directory of the volume but `keep`, and a stray `..data_tmp`.
fn remove_old_data(dir: &Path, keep: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("..") || name == DATA_LINK || name == keep {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Writes `files` as the whole content of the volume directory `dir` (made 0755 if missing;
/// its parent must exist), atomically (see the module docs). Returns whether anything was
/// written: `false` when the content was already there. `durable`: fsync files and
/// directories (for volumes on disk; RAM-backed ones need not). The caller serialises writes
/// of one volume.
pub fn write_volume(dir: &Path, files: &[VolumeFile], durable: bool) -> Result<bool, RuntimeError> {
    let name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    validate_files(&name, files)?;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(io_error(
                "writing volume",
                dir,
                std::io::Error::other("not a directory"),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            make_dir(dir, VOLUME_DIR_MODE).map_err(|e| io_error("creating", dir, e))?;
        }
        Err(e) => return Err(io_error("reading", dir, e)),
    }
    let context = |e| io_error("writing volume", dir, e);
    let current = current_data(dir);
    if let Some(current) = &current {
        if same_content(&dir.join(current), files) {
            // Repairs what an interrupted update left (links, the old data directory).
            sync_links(dir, files).map_err(context)?;
            remove_old_data(dir, current).map_err(context)?;
            return Ok(false);
        }
    }
    let data_name = new_data_name(dir);
    let data = dir.join(&data_name);
    let written = make_dir(&data, VOLUME_DIR_MODE).and_then(|()| write_data(&data, files, durable));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&data);
        return Err(context(e));
    }
    let tmp = dir.join(DATA_TMP_LINK);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e)),
    }
    symlink(&data_name, &tmp)
        .and_then(|()| std::fs::rename(&tmp, dir.join(DATA_LINK)))
        .map_err(context)?;
    if durable {
        fsync_dir(dir).map_err(context)?;
    }
    sync_links(dir, files).map_err(context)?;
    remove_old_data(dir, &data_name).map_err(context)?;
    if durable {
        fsync_dir(dir).map_err(context)?;
    }
    debug!(volume = %dir.display(), files = files.len(), "volume written");
    Ok(true)
}

/// The real path of `sub_path` in the volume's current data (`..data/<sub_path>` with the
/// links resolved), checked to be inside it.
pub(crate) fn resolve_sub_path(dir: &Path, sub_path: &str) -> Result<PathBuf, RuntimeError> {
    let volume = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if let Some(why) = bad_relative_path(sub_path) {
        return Err(invalid(format!(
            "sub path {sub_path:?} of volume {volume:?} is not allowed: {why}"
        )));
    }
    let data = std::fs::canonicalize(dir.join(DATA_LINK))
        .map_err(|e| io_error("reading volume", dir, e))?;
    match std::fs::canonicalize(data.join(sub_path)) {
        Ok(real) if real.starts_with(&data) => Ok(real),
        Ok(_) => Err(invalid(format!(
            "sub path {sub_path:?} of volume {volume:?} leads out of the volume"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(invalid(format!(
            "sub path {sub_path:?} is not in volume {volume:?}"
        ))),
        Err(e) => Err(io_error("reading volume", dir, e)),
    }
}

/// Makes `dest` a copy of `src` (a file or a directory of the volume's data) made of hard
/// links: the same files, which a later update of the volume does not change (it writes new
/// ones), and a path that stays when the update removes the old data directory. `dest` must
/// be on the same file system; what was at `dest` is replaced.
pub(crate) fn snapshot(src: &Path, dest: &Path) -> Result<(), RuntimeError> {
    fn copy(src: &Path, dest: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(src)?;
        if meta.is_dir() {
            make_dir(dest, VOLUME_DIR_MODE)?;
            for entry in std::fs::read_dir(src)? {
                let entry = entry?;
                copy(&entry.path(), &dest.join(entry.file_name()))?;
            }
            Ok(())
        } else if meta.is_file() {
            std::fs::hard_link(src, dest)
        } else {
            Err(std::io::Error::other("neither a file nor a directory"))
        }
    }
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(dest),
        Ok(_) => std::fs::remove_file(dest),
        Err(_) => Ok(()),
    }
    .and_then(|()| copy(src, dest))
    .map_err(|e| io_error("making a copy of a volume's sub path at", dest, e))
}

/// Whether `path` is on tmpfs or ramfs; `Err` says what it is instead.
pub fn is_ram_backed(path: &Path) -> Result<(), String> {
    match nix::sys::statfs::statfs(path) {
        Ok(fs) => {
            let kind = fs.filesystem_type().0 as u32;
            if kind == TMPFS_MAGIC || kind == RAMFS_MAGIC {
                Ok(())
            } else {
                Err(format!(
                    "{} is not tmpfs or ramfs (file system type {kind:#x})",
                    path.display()
                ))
            }
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// This process's effective user id (from `/proc/self/status`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The RAM-backed directory for secret data: the first candidate base (`ram_dir`, or
/// `$XDG_RUNTIME_DIR`, `/dev/shm`, `/run`) that is RAM-backed, joined with `shoal-<id>`; or
/// why there is none.
fn find_ram_root(config: &RuntimeConfig, kind: RuntimeKind) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match &config.ram_dir {
        Some(dir) => vec![dir.clone()],
        None => {
            let mut c = Vec::new();
            if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
                c.push(PathBuf::from(dir));
            }
            c.extend([PathBuf::from("/dev/shm"), PathBuf::from("/run")]);
            c
        }
    };
    let mut reasons = Vec::new();
    if config.ram_dir.is_none() && std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|v| v.is_empty())
    {
        reasons.push("$XDG_RUNTIME_DIR is not set".to_string());
    }
    for base in candidates {
        match is_ram_backed(&base) {
            Ok(()) => return Ok(base.join(format!("shoal-{}", agent_id(config, kind)))),
            Err(why) => reasons.push(why),
        }
    }
    Err(reasons.join("; "))
}

/// The file in `shoal-<id>` that holds the agent's data dir.
const DATA_DIR_MARKER: &str = "data-dir";

fn absolute_data_dir(config: &RuntimeConfig) -> PathBuf {
    std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone())
}

/// Removes the RAM-backed directories (in the default places) of the agent whose data dir
/// is `data_dir`: for when that agent was killed and will not come back (`shoal up` stopping
/// a cluster), so that no secret of its pods stays in RAM. Returns how many were removed.
pub(crate) fn remove_ram_dirs_of(data_dir: &Path) -> usize {
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let me = effective_uid();
    let bases = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm"), PathBuf::from("/run")]);
    let mut removed = 0;
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("shoal-"))
                && std::fs::symlink_metadata(&path)
                    .is_ok_and(|m| m.is_dir() && Some(m.uid()) == me)
                && std::fs::read(path.join(DATA_DIR_MARKER))
                    .is_ok_and(|d| d == data_dir.as_os_str().as_encoded_bytes());
            if ours && std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// 16 hex digits naming this agent's runtime: its kind, cluster, node and data dir.
fn agent_id(config: &RuntimeConfig, kind: RuntimeKind) -> String {
    let data_dir = absolute_data_dir(config);
    let mut hash = sha2::Sha256::new();
    for part in [
        kind.as_str().as_bytes(),
        config.cluster_id.as_bytes(),
        config.node_id.as_bytes(),
        data_dir.as_os_str().as_encoded_bytes(),
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hex::encode(&hash.finalize()[..8])
}

/// Where a runtime keeps its pods' volumes (see the module docs), and the pods' RAM-backed
/// directories.
#[derive(Clone, Debug)]
pub(crate) struct VolumeStore {
    /// The directory of the pods' disk-backed directories (`<disk_pods>/<uid>/volumes/`).
    disk_pods: PathBuf,
    /// The agent's data dir (absolute), as `shoal-<id>/data-dir` tells it.
    data_dir: PathBuf,
    /// `<RAM-backed base>/shoal-<id>`, or why there is none.
    ram_root: Result<PathBuf, String>,
}

impl VolumeStore {
    /// The store of a runtime of `kind` whose pods' directories on disk are in `disk_pods`.
    pub(crate) fn new(config: &RuntimeConfig, kind: RuntimeKind, disk_pods: PathBuf) -> Self {
        let ram_root = find_ram_root(config, kind);
        match &ram_root {
            Ok(root) => debug!(ram = %root.display(), "secret data goes to RAM-backed storage"),
            Err(why) => {
                debug!(reason = %why, "no RAM-backed storage: pods with secret data will not start")
            }
        }
        VolumeStore {
            disk_pods,
            data_dir: absolute_data_dir(config),
            ram_root,
        }
    }

    /// `<RAM-backed base>/shoal-<id>`, when there is RAM-backed storage.
    pub(crate) fn ram_root(&self) -> Option<&Path> {
        self.ram_root.as_deref().ok()
    }

    /// The pod's directory on disk.
    pub(crate) fn disk_pod_dir(&self, uid: &str) -> PathBuf {
        self.disk_pods.join(uid)
    }

    /// The pod's RAM-backed directory (it may not exist), when there is RAM-backed storage.
    pub(crate) fn ram_pod_dir(&self, uid: &str) -> Option<PathBuf> {
        Some(self.ram_root()?.join("pods").join(uid))
    }

    /// The pod's directory for volumes of this sensitivity.
    fn pod_dir(&self, uid: &str, sensitive: bool) -> Option<PathBuf> {
        if sensitive {
            self.ram_pod_dir(uid)
        } else {
            Some(self.disk_pod_dir(uid))
        }
    }

    /// The volume's directory.
    pub(crate) fn volume_dir(&self, uid: &str, name: &str, sensitive: bool) -> Option<PathBuf> {
        Some(self.pod_dir(uid, sensitive)?.join("volumes").join(name))
    }

    /// Where the copy of what container `container`'s mount number `index` takes of a volume
    /// of this sensitivity (its `sub_path`) goes: on the volume's file system, for hard links.
    /// Its parent is made.
    pub(crate) fn sub_path_dir(
        &self,
        uid: &str,
        sensitive: bool,
        container: &str,
        index: usize,
    ) -> Result<PathBuf, RuntimeError> {
        let pod_dir = self.pod_dir(uid, sensitive).ok_or_else(|| {
            RuntimeError::Secret(format!(
                "pod {uid}: no RAM-backed storage for its secret data"
            ))
        })?;
        let parent = pod_dir.join("subpaths").join(container);
        create_private_dir(&parent).map_err(|e| io_error("creating", &parent, e))?;
        Ok(parent.join(index.to_string()))
    }

    /// Volume name -> directory, for [`super::PodInfo::volume_dirs`].
    pub(crate) fn volume_dirs<'a>(
        &self,
        uid: &str,
        volumes: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> BTreeMap<String, String> {
        volumes
            .into_iter()
            .filter_map(|(name, sensitive)| {
                let dir = self.volume_dir(uid, name, sensitive)?;
                Some((name.to_string(), dir.display().to_string()))
            })
            .collect()
    }

    /// Makes the pod's RAM-backed directory (0700, in `shoal-<id>`, which must be a
    /// directory of this user's); `what` tells, in the error, what needs it.
    pub(crate) fn make_ram_pod_dir(
        &self,
        pod: &PodSpec,
        what: &str,
    ) -> Result<PathBuf, RuntimeError> {
        let root = match &self.ram_root {
            Ok(root) => root,
            Err(why) => {
                return Err(RuntimeError::Secret(format!(
                    "pod {}/{} has secret data ({what}), which is kept in RAM-backed storage (tmpfs or ramfs) only, never on disk, and this node has none: {why}",
                    pod.namespace, pod.name
                )));
            }
        };
        let refuse = |why: String| {
            RuntimeError::Secret(format!(
                "pod {}/{} has secret data ({what}) and the RAM-backed directory {} cannot hold it: {why}",
                pod.namespace,
                pod.name,
                root.display()
            ))
        };
        match std::fs::DirBuilder::new().mode(PRIVATE_DIR).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Shared storage (/dev/shm): someone else may have made it first.
                let meta = std::fs::symlink_metadata(root).map_err(|e| refuse(e.to_string()))?;
                if !meta.is_dir() {
                    return Err(refuse("it is not a directory".to_string()));
                }
                if Some(meta.uid()) != effective_uid() {
                    return Err(refuse(format!(
                        "it belongs to user {}, not to the agent's",
                        meta.uid()
                    )));
                }
            }
            Err(e) => return Err(refuse(e.to_string())),
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(PRIVATE_DIR))
            .map_err(|e| refuse(e.to_string()))?;
        // Which agent's it is, for [`remove_ram_dirs_of`].
        let marker = root.join(DATA_DIR_MARKER);
        if !marker.exists() {
            std::fs::write(&marker, self.data_dir.as_os_str().as_encoded_bytes())
                .map_err(|e| refuse(e.to_string()))?;
        }
        let dir = root.join("pods").join(&pod.uid);
        create_private_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
        Ok(dir)
    }

    /// Writes every volume of the pod afresh (whatever an earlier incarnation of the uid left
    /// there is replaced). The disk-backed pod directory must exist or be creatable; the
    /// RAM-backed one is made when a volume is sensitive.
    pub(crate) fn write_pod(&self, pod: &PodSpec) -> Result<(), RuntimeError> {
        for v in &pod.volumes {
            let pod_dir = if v.sensitive {
                self.make_ram_pod_dir(pod, &format!("volume {:?}", v.name))?
            } else {
                let dir = self.disk_pod_dir(&pod.uid);
                create_private_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
                dir
            };
            let volumes = pod_dir.join("volumes");
            create_private_dir(&volumes).map_err(|e| io_error("creating", &volumes, e))?;
            let dir = volumes.join(&v.name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("removing", &dir, e)),
            }
            write_volume(&dir, &v.files, !v.sensitive)?;
        }
        Ok(())
    }

    /// Rewrites a volume the pod was started with (its directory and `..data` exist); returns
    /// whether anything changed. The caller serialises updates of one pod.
    pub(crate) fn update(&self, uid: &str, volume: &VolumeSpec) -> Result<bool, RuntimeError> {
        let missing = || {
            invalid(format!(
                "pod {uid} has no {}volume named {:?}",
                if volume.sensitive { "sensitive " } else { "" },
                volume.name
            ))
        };
        if !is_dns_label(&volume.name) || !super::is_safe_name(uid, 128) {
            return Err(missing());
        }
        let dir = self
            .volume_dir(uid, &volume.name, volume.sensitive)
            .ok_or_else(missing)?;
        if current_data(&dir).is_none() {
            return Err(missing());
        }
        write_volume(&dir, &volume.files, !volume.sensitive)
    }

    /// Removes the pod's RAM-backed directory (volumes, kept environment). A uid no pod can
    /// have (`..`, a `/`) names nothing to remove.
    pub(crate) fn remove_ram(&self, uid: &str) -> Result<(), RuntimeError> {
        match self.ram_pod_dir(uid) {
            Some(dir) if super::is_safe_name(uid, 128) => remove_all(&dir),
            _ => Ok(()),
        }
    }

    /// Removes the pod's directory on disk (nothing for a uid no pod can have).
    pub(crate) fn remove_disk(&self, uid: &str) -> Result<(), RuntimeError> {
        if !super::is_safe_name(uid, 128) {
            return Ok(());
        }
        remove_all(&self.disk_pod_dir(uid))
    }

    /// The uids that have a RAM-backed directory.
    pub(crate) fn ram_uids(&self) -> Vec<String> {
        self.ram_root()
            .map(|root| list_uids(&root.join("pods")))
            .unwrap_or_default()
    }

    /// The uids that have a directory on disk.
    pub(crate) fn disk_uids(&self) -> Vec<String> {
        list_uids(&self.disk_pods)
    }
}

/// Scratch volumes (`emptyDir`) and host paths (`hostPath`).
impl VolumeStore {
    /// The directory of scratch volume `name`: `<pod dir>/scratch/<name>/`, on disk, or in
    /// RAM-backed storage for a `memory` one (`None` when there is none).
    pub(crate) fn scratch_dir(&self, uid: &str, name: &str, memory: bool) -> Option<PathBuf> {
        Some(self.pod_dir(uid, memory)?.join("scratch").join(name))
    }

    /// Makes every scratch volume of the pod, empty (what an earlier incarnation of the uid
    /// left there is removed), mode 0777. A `memory` one needs RAM-backed storage, or the pod
    /// does not start ([`RuntimeError::Secret`]).
    pub(crate) fn make_scratch(&self, pod: &PodSpec) -> Result<(), RuntimeError> {
        for s in &pod.scratch {
            let pod_dir = if s.memory {
                self.make_ram_pod_dir(pod, &format!("memory scratch volume {:?}", s.name))?
            } else {
                let dir = self.disk_pod_dir(&pod.uid);
                create_private_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
                dir
            };
            let parent = pod_dir.join("scratch");
            create_private_dir(&parent).map_err(|e| io_error("creating", &parent, e))?;
            let dir = parent.join(&s.name);
            remove_all(&dir)?;
            make_dir(&dir, SCRATCH_DIR_MODE).map_err(|e| io_error("creating", &dir, e))?;
        }
        Ok(())
    }

    /// Scratch and host path volume name -> directory (or file), for
    /// [`super::PodInfo::volume_dirs`].
    pub(crate) fn other_dirs(
        &self,
        uid: &str,
        scratch: &[super::ScratchVolume],
        host_paths: &[HostPathVolume],
    ) -> BTreeMap<String, String> {
        let scratch = scratch.iter().filter_map(|s| {
            let dir = self.scratch_dir(uid, &s.name, s.memory)?;
            Some((s.name.clone(), dir.display().to_string()))
        });
        let hosts = host_paths.iter().map(|h| (h.name.clone(), h.path.clone()));
        scratch.chain(hosts).collect()
    }

    /// Scratch volume name -> bytes used, for those with a size limit
    /// ([`super::PodInfo::scratch_bytes`]).
    pub(crate) fn scratch_bytes(
        &self,
        uid: &str,
        scratch: &[super::ScratchVolume],
    ) -> BTreeMap<String, u64> {
        scratch
            .iter()
            .filter_map(|s| {
                let limit = s.size_limit?;
                let dir = self.scratch_dir(uid, &s.name, s.memory)?;
                Some((s.name.clone(), dir_usage(&dir, limit)))
            })
            .collect()
    }
}

/// The bytes the files under `dir` take (their sizes; symbolic links are not followed),
/// counting no further once past `limit` (then `limit + 1`) or after [`MAX_SCRATCH_ENTRIES`]
/// entries. A directory that cannot be read counts as empty.
pub(crate) fn dir_usage(dir: &Path, limit: u64) -> u64 {
    let mut total: u64 = 0;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_SCRATCH_ENTRIES {
                return total.min(limit.saturating_add(1));
            }
            // `DirEntry::metadata` does not follow symbolic links.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
                if total > limit {
                    return limit.saturating_add(1);
                }
            }
        }
    }
    total
}

/// Checks (or makes) what a host path volume needs at its path ([`HostPathCheck`]);
/// [`RuntimeError::HostPath`] says what is wrong.
pub(crate) fn check_host_path(volume: &HostPathVolume) -> Result<(), RuntimeError> {
    let path = Path::new(&volume.path);
    let fail = |problem: String| RuntimeError::HostPath {
        volume: volume.name.clone(),
        path: volume.path.clone(),
        problem,
    };
    let expected = volume.check.expected();
    let meta = match volume.check {
        HostPathCheck::None => return Ok(()),
        HostPathCheck::DirectoryOrCreate => {
            if std::fs::symlink_metadata(path).is_err() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(VOLUME_DIR_MODE)
                    .create(path)
                    .map_err(|e| fail(format!("could not be made a directory: {e}")))?;
            }
            std::fs::metadata(path)
        }
        HostPathCheck::FileOrCreate => {
            if std::fs::symlink_metadata(path).is_err() {
                let parent = path.parent().unwrap_or(Path::new("/"));
                if !parent.is_dir() {
                    return Err(fail(format!(
                        "could not be made a file: its parent directory {} does not exist",
                        parent.display()
                    )));
                }
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(path)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(fail(format!("could not be made a file: {e}"))),
                }
            }
            std::fs::metadata(path)
        }
        _ => std::fs::metadata(path),
    };
    let meta = match meta {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!("does not exist: expected {expected}")));
        }
        Err(e) => return Err(fail(format!("cannot be read ({e}): expected {expected}"))),
    };
    use std::os::unix::fs::FileTypeExt as _;
    let kind = meta.file_type();
    let ok = match volume.check {
        HostPathCheck::None => true,
        HostPathCheck::DirectoryOrCreate | HostPathCheck::Directory => kind.is_dir(),
        HostPathCheck::FileOrCreate | HostPathCheck::File => kind.is_file(),
        HostPathCheck::Socket => kind.is_socket(),
        HostPathCheck::CharDevice => kind.is_char_device(),
        HostPathCheck::BlockDevice => kind.is_block_device(),
    };
    if ok {
        return Ok(());
    }
    let is = if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "something else"
    };
    Err(fail(format!("is {is}, not {expected}")))
}

/// The path of `sub_path` in the directory `root` of a scratch or host path volume: made (a
/// directory, with `mode`) when missing, as Kubernetes does, and checked to stay inside
/// `root` once links are resolved.
pub(crate) fn dir_sub_path(
    root: &Path,
    volume: &str,
    sub_path: &str,
    mode: u32,
) -> Result<PathBuf, RuntimeError> {
    if let Some(why) = bad_relative_path(sub_path) {
        return Err(invalid(format!(
            "sub path {sub_path:?} of volume {volume:?} is not allowed: {why}"
        )));
    }
    let path = root.join(sub_path);
    if std::fs::symlink_metadata(&path).is_err() {
        let mut at = root.to_path_buf();
        for part in Path::new(sub_path).components() {
            at.push(part);
            make_dir_if_missing(&at, mode).map_err(|e| io_error("creating", &at, e))?;
        }
    }
    let real_root = std::fs::canonicalize(root).map_err(|e| io_error("reading", root, e))?;
    let real = std::fs::canonicalize(&path).map_err(|e| io_error("reading", &path, e))?;
    if !real.starts_with(&real_root) {
        return Err(invalid(format!(
            "sub path {sub_path:?} of volume {volume:?} leads out of the volume"
        )));
    }
    Ok(real)
}

/// Creates `dir` with `mode` when nothing is there (a link there is left as it is).
fn make_dir_if_missing(dir: &Path, mode: u32) -> std::io::Result<()> {
    if std::fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    make_dir(dir, mode)
}

/// The mode for sub path directories made in a scratch volume (writable by anyone, as the
/// volume) or a host path (0755).
pub(crate) fn sub_path_mode(scratch: bool) -> u32 {
    if scratch {
        SCRATCH_DIR_MODE
    } else {
        VOLUME_DIR_MODE
    }
}

fn remove_all(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing", dir, e)),
    }
}

fn list_uids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut uids: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|uid| super::is_safe_name(uid, 128))
        .collect();
    uids.sort();
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "shoal-volume-{test}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file(path: &str, data: &str, mode: u32) -> VolumeFile {
        VolumeFile {
            path: path.to_string(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// The names in `dir`, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_appear_with_their_content_and_modes_through_relative_links() {
        let tmp = Dir::new("content");
        let dir = tmp.0.join("config");
        let files = vec![
            file("app.conf", "port=8080\n", 0o644),
            file("secret.key", "k", 0o400),
            file("dir/sub/nested", "deep", 0o600),
            file("dir/other", "o", 0o640),
        ];
        assert!(write_volume(&dir, &files, true).unwrap());
        for f in &files {
            let path = dir.join(&f.path);
            assert_eq!(std::fs::read(&path).unwrap(), f.data, "{}", f.path);
            assert_eq!(mode_of(&path), f.mode, "{}", f.path);
        }
        assert_eq!(mode_of(&dir), 0o755);
        assert_eq!(mode_of(&dir.join("dir/sub")), 0o755);
        // The links are relative: `..data` names the data directory, the top-level entries go
        // through `..data`.
        let data = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert!(data.to_str().unwrap().starts_with(".."), "{data:?}");
        assert!(!data.is_absolute());
        assert_eq!(
            std::fs::read_link(dir.join("app.conf")).unwrap(),
            Path::new("..data/app.conf")
        );
        assert_eq!(
            std::fs::read_link(dir.join("dir")).unwrap(),
            Path::new("..data/dir")
        );
        let mut expected = vec![
            DATA_LINK.to_string(),
            data.to_str().unwrap().to_string(),
            "app.conf".to_string(),
            "dir".to_string(),
            "secret.key".to_string(),
        ];
        expected.sort();
        assert_eq!(entries(&dir), expected);
        // A copy of the volume elsewhere (as a bind mount shows it) resolves the same.
        let moved = tmp.0.join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        assert_eq!(
            std::fs::read(moved.join("dir/sub/nested")).unwrap(),
            b"deep"
        );
    }

    #[test]
    fn unchanged_content_writes_nothing_and_a_change_of_mode_is_a_change() {
        let tmp = Dir::new("unchanged");
        let dir = tmp.0.join("v");
        let files = vec![file("a", "1", 0o644), file("d/b", "2", 0o644)];
        assert!(write_volume(&dir, &files, false).unwrap());
        let data = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        let before = std::fs::symlink_metadata(dir.join(&data)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        // Same content, in another order: nothing written.
        let reordered = vec![file("d/b", "2", 0o644), file("a", "1", 0o644)];
        assert!(!write_volume(&dir, &reordered, false).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), data);
        let after = std::fs::symlink_metadata(dir.join(&data)).unwrap();
        assert_eq!(before.modified().unwrap(), after.modified().unwrap());
        assert_eq!(before.ino(), after.ino());
        // A mode alone is a change.
        let narrowed = vec![file("a", "1", 0o600), file("d/b", "2", 0o644)];
        assert!(write_volume(&dir, &narrowed, false).unwrap());
        assert_ne!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), data);
        assert_eq!(mode_of(&dir.join("a")), 0o600);
        assert!(
            !dir.join(&data).exists(),
            "the old data directory is removed"
        );
    }

    #[test]
    fn removed_keys_disappear_with_the_old_data() {
        let tmp = Dir::new("removal");
        let dir = tmp.0.join("v");
        let files = vec![
            file("a", "1", 0o644),
            file("b", "2", 0o644),
            file("d/c", "3", 0o644),
        ];
        write_volume(&dir, &files, false).unwrap();
        write_volume(&dir, &[file("a", "one", 0o644)], false).unwrap();
        let data = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        let mut expected = vec![
            DATA_LINK.to_string(),
            data.to_str().unwrap().to_string(),
            "a".to_string(),
        ];
        expected.sort();
        assert_eq!(entries(&dir), expected);
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"one");
        assert!(!dir.join("b").exists());
        assert!(std::fs::symlink_metadata(dir.join("d")).is_err());
        // And a key can come back, or become a directory.
        write_volume(&dir, &[file("b/x", "x", 0o644)], false).unwrap();
        assert_eq!(std::fs::read(dir.join("b/x")).unwrap(), b"x");
        assert!(std::fs::symlink_metadata(dir.join("a")).is_err());
        // An empty volume is a volume.
        write_volume(&dir, &[], false).unwrap();
        assert_eq!(entries(&dir).len(), 2, "{:?}", entries(&dir));
    }

    #[test]
    fn a_reader_never_sees_two_versions_at_once() {
        let tmp = Dir::new("atomic");
        let dir = tmp.0.join("v");
        let version = |n: usize| {
            // Sizes vary, so that a torn file would show.
            let text = format!("{n};").repeat(1 + n % 50);
            vec![
                file("first", &text, 0o644),
                file("nested/second", &text, 0o644),
            ]
        };
        write_volume(&dir, &version(0), false).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let whole = |text: &str| {
                    let token = text.split_inclusive(';').next().unwrap_or("");
                    !token.is_empty() && text.split_inclusive(';').all(|t| t == token)
                };
                let (mut pairs, mut singles) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Through a top-level link: one version of the file, whole.
                    if let Ok(text) = std::fs::read_to_string(dir.join("first")) {
                        assert!(whole(&text), "a torn file: {text:?}");
                        singles += 1;
                    }
                    // `..data` resolved once: both files of one version. A data directory
                    // removed under the reader is a miss, not a mix.
                    let Ok(data) = std::fs::canonicalize(dir.join(DATA_LINK)) else {
                        continue;
                    };
                    let (Ok(a), Ok(b)) = (
                        std::fs::read_to_string(data.join("first")),
                        std::fs::read_to_string(data.join("nested/second")),
                    ) else {
                        continue;
                    };
                    assert_eq!(a, b, "a reader saw two versions at once");
                    assert!(whole(&a), "a torn file: {a:?}");
                    pairs += 1;
                }
                (pairs, singles)
            })
        };
        for n in 1..=200 {
            assert!(write_volume(&dir, &version(n), false).unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (pairs, singles) = reader.join().expect("the reader saw no mix");
        assert!(
            pairs > 0 && singles > 0,
            "{pairs} pairs, {singles} files read"
        );
        assert_eq!(
            std::fs::read(dir.join("nested/second")).unwrap(),
            version(200)[1].data
        );
    }

    #[test]
    fn bad_paths_modes_and_sizes_are_refused_before_anything_is_written() {
        let tmp = Dir::new("refused");
        let dir = tmp.0.join("v");
        for (files, expect) in [
            (vec![file("/etc/passwd", "x", 0o644)], "absolute"),
            (vec![file("../x", "x", 0o644)], "starts with '..'"),
            (vec![file("..data", "x", 0o644)], "starts with '..'"),
            (vec![file("a/../../b", "x", 0o644)], "'..' part"),
            (vec![file("a/./b", "x", 0o644)], "'..' part"),
            (vec![file("a//b", "x", 0o644)], "empty part"),
            (vec![file("a/", "x", 0o644)], "empty part"),
            (vec![file("", "x", 0o644)], "empty"),
            (vec![file("a\0b", "x", 0o644)], "NUL"),
            (vec![file(&"x".repeat(256), "x", 0o644)], "255"),
            (vec![file("a", "x", 0o4755)], "mode"),
            (vec![file("a", "1", 0o644), file("a", "2", 0o644)], "twice"),
            (
                vec![
                    file("a", "1", 0o644),
                    file("a.b", "2", 0o644),
                    file("a/b", "3", 0o644),
                ],
                "is a file and the directory",
            ),
        ] {
            let err = write_volume(&dir, &files, false).unwrap_err().to_string();
            assert!(err.contains(expect), "{files:?}: {err}");
        }
        let many: Vec<VolumeFile> = (0..=MAX_VOLUME_FILES)
            .map(|i| file(&format!("f{i}"), "", 0o644))
            .collect();
        let err = write_volume(&dir, &many, false).unwrap_err().to_string();
        assert!(err.contains("1001 files"), "{err}");
        let big = vec![VolumeFile {
            path: "big".into(),
            data: vec![0; MAX_VOLUME_BYTES + 1],
            mode: 0o644,
        }];
        let err = write_volume(&dir, &big, false).unwrap_err().to_string();
        assert!(err.contains("volume \"v\" holds 4194305 bytes"), "{err}");
        assert!(!dir.exists(), "nothing was written");
        // A sub path follows the same rules, and must lead to something in the volume.
        write_volume(&dir, &[file("d/k", "v", 0o644)], false).unwrap();
        let real = resolve_sub_path(&dir, "d/k").unwrap();
        assert_eq!(std::fs::read(&real).unwrap(), b"v");
        assert!(real.starts_with(std::fs::canonicalize(&dir).unwrap()));
        assert!(resolve_sub_path(&dir, "../x").is_err());
        let err = resolve_sub_path(&dir, "nope").unwrap_err().to_string();
        assert!(err.contains("not in volume"), "{err}");
    }

    #[test]
    fn a_snapshot_keeps_its_content_when_the_volume_changes() {
        let tmp = Dir::new("snapshot");
        let dir = tmp.0.join("v");
        write_volume(
            &dir,
            &[file("k", "old", 0o640), file("d/x", "x1", 0o644)],
            false,
        )
        .unwrap();
        let (file_copy, dir_copy) = (tmp.0.join("file-copy"), tmp.0.join("dir-copy"));
        snapshot(&resolve_sub_path(&dir, "k").unwrap(), &file_copy).unwrap();
        snapshot(&resolve_sub_path(&dir, "d").unwrap(), &dir_copy).unwrap();
        write_volume(
            &dir,
            &[file("k", "new", 0o640), file("d/x", "x2", 0o644)],
            false,
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.join("k")).unwrap(), b"new");
        assert_eq!(std::fs::read(&file_copy).unwrap(), b"old");
        assert_eq!(mode_of(&file_copy), 0o640);
        assert_eq!(std::fs::read(dir_copy.join("x")).unwrap(), b"x1");
    }

    #[test]
    fn pod_volumes_and_mounts_are_checked() {
        use super::super::{ContainerSpec, Mount};
        let mut pod = PodSpec {
            uid: "u".into(),
            namespace: "default".into(),
            name: "web".into(),
            spec_hash: "h".into(),
            containers: vec![ContainerSpec {
                name: "c".into(),
                env: vec![("TOKEN".into(), "t".into())],
                sensitive_env: vec!["TOKEN".into()],
                pod_ip_env: vec!["MY_IP".into()],
                mounts: vec![Mount {
                    volume: "config".into(),
                    mount_path: "/etc/config".into(),
                    read_only: true,
                    sub_path: None,
                }],
                ..Default::default()
            }],
            labels: BTreeMap::new(),
            dns: None,
            volumes: vec![VolumeSpec {
                name: "config".into(),
                sensitive: false,
                files: vec![file("a", "1", 0o644)],
            }],
            scratch: Vec::new(),
            host_paths: Vec::new(),
        };
        super::super::validate_spec(&pod).unwrap();
        let check = |change: &dyn Fn(&mut PodSpec), expect: &str| {
            let mut bad = pod.clone();
            change(&mut bad);
            let err = super::super::validate_spec(&bad).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
        };
        check(&|p| p.volumes[0].name = "Config".into(), "DNS-1123");
        // Scratch and host path volumes share the names' space with the volumes of files.
        let scratch = |name: &str| super::super::ScratchVolume {
            name: name.into(),
            ..Default::default()
        };
        let host = |name: &str, path: &str| HostPathVolume {
            name: name.into(),
            path: path.into(),
            check: HostPathCheck::None,
        };
        check(&|p| p.scratch.push(scratch("config")), "two volumes named");
        check(&|p| p.scratch.push(scratch("Cache")), "DNS-1123");
        check(
            &|p| {
                p.scratch.push(scratch("cache"));
                p.host_paths.push(host("cache", "/tmp"));
            },
            "two volumes named \"cache\"",
        );
        check(&|p| p.host_paths.push(host("logs", "var/log")), "absolute");
        check(&|p| p.host_paths.push(host("logs", "/var/../etc")), "'..'");
        check(
            &|p| p.containers[0].mounts[0].volume = "cache".into(),
            "does not have",
        );
        let mut ok = pod.clone();
        ok.scratch.push(scratch("cache"));
        ok.host_paths.push(host("logs", "/var/log"));
        for (name, path) in [("cache", "/cache"), ("logs", "/logs")] {
            ok.containers[0].mounts.push(super::super::Mount {
                volume: name.into(),
                mount_path: path.into(),
                ..Default::default()
            });
        }
        super::super::validate_spec(&ok).unwrap();
        check(
            &|p| p.volumes.push(p.volumes[0].clone()),
            "two volumes named",
        );
        check(
            &|p| p.containers[0].mounts[0].volume = "other".into(),
            "does not have",
        );
        for path in ["etc", "/", "/a/../b", "/a/./b"] {
            check(
                &|p| p.containers[0].mounts[0].mount_path = path.into(),
                "absolute path",
            );
        }
        check(
            &|p| {
                let mut again = p.containers[0].mounts[0].clone();
                again.mount_path = "/etc/config/".into();
                p.containers[0].mounts.push(again);
            },
            "two volumes at",
        );
        check(
            &|p| p.containers[0].mounts[0].sub_path = Some("../a".into()),
            "sub path",
        );
        check(
            &|p| p.containers[0].sensitive_env = vec!["OTHER".into()],
            "not in its environment",
        );
        check(
            &|p| p.containers[0].pod_ip_env = vec!["A=B".into()],
            "not a variable",
        );
        check(
            &|p| p.volumes[0].files.push(file("/x", "", 0o644)),
            "absolute",
        );
        // A sensitive volume is a volume like any other to the checks.
        pod.volumes[0].sensitive = true;
        super::super::validate_spec(&pod).unwrap();
    }

    #[test]
    fn debug_output_shows_no_secret() {
        use super::super::ContainerSpec;
        let f = file("token", "hunter2", 0o400);
        let shown = format!("{f:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("token") && shown.contains("size: 7") && shown.contains("0o400"));
        let c = ContainerSpec {
            name: "c".into(),
            env: vec![
                ("PLAIN".into(), "visible".into()),
                ("TOKEN".into(), "hunter2".into()),
            ],
            sensitive_env: vec!["TOKEN".into()],
            ..Default::default()
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("visible"),
            "{shown}"
        );
    }

    #[test]
    fn ram_storage_is_found_or_refused_with_a_reason() {
        let tmp = Dir::new("ram");
        let mut config = RuntimeConfig::new("c", "n", &tmp.0);
        // A directory on disk is not taken, even when asked for.
        config.ram_dir = Some(tmp.0.clone());
        if is_ram_backed(&tmp.0).is_ok() {
            eprintln!("the temporary directory is RAM-backed: nothing to refuse");
            return;
        }
        let store = VolumeStore::new(&config, RuntimeKind::Process, tmp.0.join("pods"));
        assert!(store.ram_root().is_none());
        let pod = PodSpec {
            uid: "u".into(),
            namespace: "default".into(),
            name: "web".into(),
            spec_hash: String::new(),
            containers: Vec::new(),
            labels: BTreeMap::new(),
            dns: None,
            volumes: vec![VolumeSpec {
                name: "token".into(),
                sensitive: true,
                files: vec![file("t", "hunter2", 0o400)],
            }],
            scratch: Vec::new(),
            host_paths: Vec::new(),
        };
        let err = store.write_pod(&pod).unwrap_err();
        assert!(matches!(err, RuntimeError::Secret(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("volume \"token\"") && err.contains("not tmpfs or ramfs"),
            "{err}"
        );
        assert!(!tmp.0.join("pods").exists());
        // The default candidates, where one is RAM-backed (as /dev/shm usually is).
        config.ram_dir = None;
        let store = VolumeStore::new(&config, RuntimeKind::Process, tmp.0.join("pods"));
        if let Some(root) = store.ram_root() {
            is_ram_backed(root.parent().unwrap()).unwrap();
            assert!(
                root.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("shoal-")
            );
            // Made on first use, 0700, naming its agent; removed with what the agent left.
            let dir = store.make_ram_pod_dir(&pod, "a test").unwrap();
            assert!(dir.starts_with(root));
            assert_eq!(mode_of(root), 0o700);
            store.write_pod(&pod).unwrap();
            assert_eq!(
                std::fs::read(dir.join("volumes/token/t")).unwrap(),
                b"hunter2"
            );
            assert_eq!(remove_ram_dirs_of(&tmp.0.join("elsewhere")), 0);
            assert!(root.exists());
            assert_eq!(remove_ram_dirs_of(&tmp.0), 1);
            assert!(!root.exists());
        }
    }
}
