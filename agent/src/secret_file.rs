//! Files holding secrets (the cluster key, the API token): whoever can read one can join the
//! cluster or drive its API, so a file other users can read is reported, the same way for
//! every such file.

use std::path::Path;

/// The permission bits of `path` when users other than its owner may read or write it
/// (group or other bits set), `None` when only the owner may, or it cannot be read.
#[cfg(unix)]
pub(crate) fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
pub(crate) fn open_to_others(_path: &Path) -> Option<u32> {
    None
}

/// Warns when the secret file `path` is open to other users. `what` names the file in the log
/// (`cluster key file`, `API token file`).
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &'static str) {
    if let Some(mode) = open_to_others(path) {
        tracing::warn!(
            file = what,
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            "{what} is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn group_or_other_bits_make_a_secret_file_open() {
        let dir = std::env::temp_dir().join(format!("shoal-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "secret").unwrap();
        for (mode, open) in [
            (0o600, None),
            (0o400, None),
            (0o644, Some(0o644)),
            (0o640, Some(0o640)),
            (0o602, Some(0o602)),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(open_to_others(&path), open, "{mode:o}");
        }
        assert_eq!(open_to_others(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
