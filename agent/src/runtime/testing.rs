//! Helpers for tests that run pods: the `shoal-demo-http` binary, the `shoal-demo:dev` image,
//! and the Docker gate.
//!
//! - [`demo_binary`] builds `shoal-demo-http` statically (`RUSTFLAGS="-C
//!   target-feature=+crt-static"`, into `<target>/demo-static/`, so the normal build is never
//!   invalidated) once per test process, or takes `$SHOAL_DEMO_BIN`. The static binary serves
//!   both runtimes.
//! - [`build_demo_image`] builds `shoal-demo:dev` from `demo/Dockerfile` and that binary with
//!   the docker CLI (what `demo/build-image.sh` does). No registry is needed.
//! - [`build_shell_image`] builds `shoal-shell:dev`: this machine's `/bin/sh`, a few tools
//!   (`cat`, `sleep`, `stat`, `df`, `ls`) and their shared libraries, for tests that look
//!   inside a container.
//! - [`docker_or_skip`]: Docker tests skip, saying why, when no engine is reachable, unless
//!   `SHOAL_REQUIRE_DOCKER=1` (CI), where they fail.
//! - [`DockerCleanup`] removes, on drop (even when the test panics), every container of a test
//!   cluster and its network, with the docker CLI (drop cannot await).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The demo image's tag.
pub const DEMO_IMAGE: &str = "shoal-demo:dev";

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory the running test was built in (`<target>/<profile>/deps/<exe>`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The statically linked `shoal-demo-http`, built on first use (or `$SHOAL_DEMO_BIN`).
pub fn demo_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SHOAL_DEMO_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let out_dir = target_dir().join("demo-static");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "shoal-demo",
                "--bin",
                "shoal-demo-http",
            ])
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &out_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .output()
            .map_err(|e| format!("running cargo to build shoal-demo-http: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "building the static shoal-demo-http failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(out_dir.join("release").join("shoal-demo-http"))
    })
    .clone()
}

/// `docker build` of the context `ctx` as `tag` (labelled as a test image, without BuildKit,
/// which may be absent), then removes `ctx`.
fn docker_build(ctx: &Path, tag: &str) -> Result<(), String> {
    let output = Command::new("docker")
        .args(["build", "--quiet", "--label", "io.shoal.demo=1", "-t", tag])
        .arg(ctx)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .map_err(|e| format!("running docker build: {e}"));
    let _ = std::fs::remove_dir_all(ctx);
    let output = output?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "docker build of {tag} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Builds the `shoal-demo:dev` image (once per test process), like `demo/build-image.sh`.
pub fn build_demo_image() -> Result<(), String> {
    static BUILT: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(result) = built.as_ref() {
        return result.clone();
    }
    let result = (|| {
        let bin = demo_binary()?;
        let ctx = std::env::temp_dir().join(format!("shoal-demo-image-{}", std::process::id()));
        std::fs::create_dir_all(&ctx).map_err(|e| format!("creating {}: {e}", ctx.display()))?;
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, ctx.join(name))
                .map(|_| ())
                .map_err(|e| format!("copying {}: {e}", from.display()))
        };
        copy(&bin, "shoal-demo-http")?;
        copy(&workspace_root().join("demo/Dockerfile"), "Dockerfile")?;
        docker_build(&ctx, DEMO_IMAGE)
    })();
    *built = Some(result.clone());
    result
}

/// The shell image's tag.
pub const SHELL_IMAGE: &str = "shoal-shell:dev";

/// Builds `shoal-shell:dev` (once per test process): `FROM scratch` with this machine's
/// `/bin/sh`, `cat`, `sleep`, `stat`, `df` and `ls` in `/bin`, and the shared libraries they
/// need at the paths the loader looks for them (as `demo/node-image.sh` does).
pub fn build_shell_image() -> Result<(), String> {
    static BUILT: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(result) = built.as_ref() {
        return result.clone();
    }
    let result = (|| {
        let ctx = std::env::temp_dir().join(format!("shoal-shell-image-{}", std::process::id()));
        let rootfs = ctx.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))
            .map_err(|e| format!("creating {}: {e}", ctx.display()))?;
        let mut libs = std::collections::BTreeSet::new();
        for tool in ["sh", "cat", "sleep", "stat", "df", "ls"] {
            let path = ["/bin", "/usr/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(tool))
                .find(|p| p.exists())
                .ok_or_else(|| format!("{tool} is not in /bin or /usr/bin"))?;
            let real = std::fs::canonicalize(&path).map_err(|e| format!("{tool}: {e}"))?;
            std::fs::copy(&real, rootfs.join("bin").join(tool))
                .map_err(|e| format!("copying {}: {e}", real.display()))?;
            let ldd = Command::new("ldd")
                .arg(&real)
                .output()
                .map_err(|e| format!("running ldd: {e}"))?;
            libs.extend(
                String::from_utf8_lossy(&ldd.stdout)
                    .split_whitespace()
                    .filter(|word| word.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
        for lib in libs {
            let dest = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{e}"))?;
            }
            std::fs::copy(&lib, &dest).map_err(|e| format!("copying {}: {e}", lib.display()))?;
        }
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n",
        )
        .map_err(|e| format!("writing the Dockerfile: {e}"))?;
        docker_build(&ctx, SHELL_IMAGE)
    })();
    *built = Some(result.clone());
    result
}

/// Whether Docker tests must run (`SHOAL_REQUIRE_DOCKER=1`).
pub fn docker_required() -> bool {
    std::env::var("SHOAL_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// `true` when a Docker engine is reachable. Otherwise prints why `test` is skipped and returns
/// `false`, or panics when `SHOAL_REQUIRE_DOCKER=1`.
pub async fn docker_or_skip(test: &str) -> bool {
    if super::docker_available().await {
        return true;
    }
    let reason = match super::DockerRuntime::new(super::RuntimeConfig::new("x", "x", "/")).await {
        Ok(_) => "the engine did not answer a ping within 2 s".to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        !docker_required(),
        "SHOAL_REQUIRE_DOCKER=1 but {test} cannot reach a Docker engine: {reason}"
    );
    eprintln!("skipping {test}: {reason} (set SHOAL_REQUIRE_DOCKER=1 to make this a failure)");
    false
}

/// A cluster id of its own for one test (its first 12 characters name the Docker network).
pub fn unique_cluster_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in test
        .bytes()
        .chain(nanos.to_le_bytes())
        .chain(std::process::id().to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("t{:011x}-{test}", h & 0xfff_ffff_ffff)
}

/// Removes a test cluster's containers and network when dropped.
pub struct DockerCleanup {
    cluster_id: String,
    network: String,
}

impl DockerCleanup {
    /// Cleans up after the runtime's cluster.
    pub fn new(runtime: &super::DockerRuntime, cluster_id: &str) -> Self {
        DockerCleanup {
            cluster_id: cluster_id.to_string(),
            network: runtime.network_name().to_string(),
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let filter = format!("label={}={}", super::LABEL_CLUSTER, self.cluster_id);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}
