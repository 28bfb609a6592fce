//! Image signatures: made over the manifest bytes, accepted by the stock
//! `minisign`, and checked against the manifest's digest.

use std::fs;

use kiln_artifact::{
    ArtifactError, Signer, build_comment, image_comment, keygen, parse_build_comment, verify, verify_image,
};
use kiln_domain::{BuildKey, OciDigest, Platform};

use crate::minisign;

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn setup(dir: &std::path::Path) -> (Signer, BuildKey, Platform) {
    keygen(&dir.join("kiln.key"), false).unwrap();
    let signer = Signer::load(&dir.join("kiln.key")).unwrap();
    (signer, BuildKey::parse(&"e4".repeat(32)).unwrap(), "linux/arm64".parse().unwrap())
}

#[test]
fn minisign_verifies_an_image_signature_over_the_manifest_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, key, platform) = setup(tmp.path());
    let digest = OciDigest::of(MANIFEST);
    let comment = image_comment(&key, &platform, &digest);
    let sig = signer.sign(MANIFEST, &comment).unwrap();
    let manifest = tmp.path().join("manifest.json");
    fs::write(&manifest, MANIFEST).unwrap();
    fs::write(tmp.path().join("image.minisig"), &sig).unwrap();

    let ok = minisign()
        .arg("-Vm")
        .arg(&manifest)
        .arg("-x")
        .arg(tmp.path().join("image.minisig"))
        .arg("-P")
        .arg(signer.public_key().to_base64())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "minisign refused: {stdout} {}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains(&format!("Trusted comment: kiln image {key} linux/arm64 {digest}")), "{stdout}");

    let checked = verify_image(signer.public_key(), MANIFEST, &sig).unwrap();
    assert_eq!((checked.key, checked.platform, checked.manifest), (key, platform, digest));
}

#[test]
fn verify_image_refuses_other_bytes_other_digests_and_artifact_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, key, platform) = setup(tmp.path());
    let digest = OciDigest::of(MANIFEST);
    let sig = signer.sign(MANIFEST, &image_comment(&key, &platform, &digest)).unwrap();

    let mut tampered = MANIFEST.to_vec();
    tampered.push(b' ');
    let err = verify_image(signer.public_key(), &tampered, &sig).unwrap_err();
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");

    // Signed by the key, but naming a digest that is not the manifest's.
    let lying = signer.sign(MANIFEST, &image_comment(&key, &platform, &OciDigest::of(b"other"))).unwrap();
    let err = verify_image(signer.public_key(), MANIFEST, &lying).unwrap_err();
    assert!(err.to_string().contains("names manifest"), "{err}");

    // An artifact signature is no image signature, and keeps verifying as before.
    let artifact_sig = signer.sign(MANIFEST, &build_comment(&key, digest.hex())).unwrap();
    let err = verify_image(signer.public_key(), MANIFEST, &artifact_sig).unwrap_err();
    assert!(err.to_string().contains("not a Kiln image signature"), "{err}");
    let v = verify(signer.public_key(), std::io::Cursor::new(MANIFEST), &artifact_sig).unwrap();
    assert_eq!(parse_build_comment(&v.trusted_comment).unwrap().key, key);

    let other = keygen(&tmp.path().join("other.key"), false).unwrap();
    assert!(verify_image(&other, MANIFEST, &sig).is_err());
}
