//! `nodectl image flash` through the command line: its refusals name the
//! reason and write nothing (the flashing itself is tested in `nodectl/flash/tests/`).

#![allow(clippy::unwrap_used)]

use clap::Parser;

async fn run(args: &[&str]) -> (Result<bool, nodectl::Error>, String) {
    let cli = nodectl::Cli::try_parse_from(args).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = nodectl::run(cli, &mut out, &mut err).await;
    (r, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn refuses_a_regular_file_a_bad_config_and_a_missing_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("bramble-arm64.img");
    std::fs::write(&image, vec![1u8; 8192]).unwrap();
    let card = dir.path().join("card");
    std::fs::write(&card, vec![0xa5u8; 8192]).unwrap();
    let (img, dev) = (image.to_str().unwrap(), card.to_str().unwrap());

    let (r, _) = run(&[
        "nodectl", "image", "flash", "--device", dev, "--image", img, "--yes",
    ])
    .await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("not a block device") && msg.contains("--allow-file"),
        "{msg}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: v1alpha1\nmachine: {}\n").unwrap();
    let args = [
        "nodectl",
        "image",
        "flash",
        "--device",
        dev,
        "--image",
        img,
        "--config",
        bad.to_str().unwrap(),
        "--allow-file",
        "--yes",
    ];
    let (r, _) = run(&args).await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("invalid machine configuration (nothing was written)"),
        "{msg}"
    );

    let missing = dir.path().join("none.img");
    let args = [
        "nodectl",
        "image",
        "flash",
        "--device",
        dev,
        "--image",
        missing.to_str().unwrap(),
        "--allow-file",
        "--yes",
    ];
    let (r, _) = run(&args).await;
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("none.img"), "{msg}");
    assert_eq!(std::fs::read(&card).unwrap(), vec![0xa5u8; 8192]);

    // Without a bmap the whole (tiny) image is written and read back.
    let (r, out) = run(&[
        "nodectl",
        "image",
        "flash",
        "--device",
        dev,
        "--image",
        img,
        "--allow-file",
        "--yes",
    ])
    .await;
    r.unwrap();
    assert!(out.contains("wrote 8192 bytes"), "{out}");
    assert!(out.contains("no block map"), "{out}");
    assert_eq!(std::fs::read(&card).unwrap(), vec![1u8; 8192]);
}
