//! The keyring as the hub uses it: wrap, unwrap, erase, rotate, and the key file on disk.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use hygie_vault::VaultError;
use hygie_vault::aead::DataKey;
use hygie_vault::ggm::{BACKUP_SLOT, CHECK_SLOT};
use hygie_vault::keyring::{FORMAT, Keyring, WRAPPED_KEY_LEN};

const NOW_US: i64 = 1_700_000_000_000_000;
const AAD: &[u8] = b"patient-dek/7";

fn keyring() -> Keyring {
    Keyring::generate("hospital.example", NOW_US)
}

fn write_with_mode(path: &Path, text: &str, mode: u32) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    // The process's umask may have cleared bits: set the mode asked for.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn malformed(result: Result<Keyring, VaultError>) -> String {
    match result {
        Err(VaultError::Malformed(message)) => message,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn generate_starts_at_generation_one() {
    let keyring = keyring();
    assert_eq!(keyring.installation(), "hospital.example");
    assert_eq!(keyring.active_generation(), 1);
    assert_eq!(keyring.generation_ids(), [1]);
    assert_eq!(keyring.generations()[0].created_us, NOW_US);
    assert!(keyring.erased_slots().is_empty());
}

#[test]
fn wrap_unwrap_round_trips() {
    let keyring = keyring();
    let dek = DataKey::generate();
    let wrapped = keyring.wrap(1, 42, &dek, AAD).unwrap();
    assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
    assert_eq!(&wrapped[..3], b"HK1");
    let unwrapped = keyring.unwrap(1, 42, &wrapped, AAD).unwrap();
    assert_eq!(unwrapped.as_bytes(), dek.as_bytes());
}

#[test]
fn unwrap_is_bound_to_slot_generation_aad_and_bytes() {
    let mut keyring = keyring();
    let wrapped = keyring.wrap(1, 42, &DataKey::generate(), AAD).unwrap();
    let corrupt = |result: Result<DataKey, VaultError>| matches!(result, Err(VaultError::Corrupt));
    assert!(corrupt(keyring.unwrap(1, 43, &wrapped, AAD)));
    assert!(corrupt(keyring.unwrap(1, 42, &wrapped, b"patient-dek/8")));
    for position in 0..wrapped.len() {
        let mut altered = wrapped.clone();
        altered[position] ^= 1;
        assert!(
            corrupt(keyring.unwrap(1, 42, &altered, AAD)),
            "byte {position}"
        );
    }
    assert!(corrupt(keyring.unwrap(1, 42, &wrapped[..74], AAD)));
    assert!(corrupt(keyring.unwrap(
        1,
        42,
        &[wrapped.as_slice(), &[0]].concat(),
        AAD
    )));
    keyring.rotate(NOW_US + 1);
    assert!(corrupt(keyring.unwrap(2, 42, &wrapped, AAD)));
    assert!(matches!(
        keyring.unwrap(3, 42, &wrapped, AAD),
        Err(VaultError::UnknownGeneration(3))
    ));
}

#[test]
fn another_keyring_does_not_unwrap() {
    let wrapped = keyring().wrap(1, 42, &DataKey::generate(), AAD).unwrap();
    assert!(matches!(
        keyring().unwrap(1, 42, &wrapped, AAD),
        Err(VaultError::Corrupt)
    ));
}

#[test]
fn unwrap_after_puncture_is_erased() {
    let mut keyring = keyring();
    let wrapped = keyring.wrap(1, 42, &DataKey::generate(), AAD).unwrap();
    let neighbour = DataKey::generate();
    let wrapped_neighbour = keyring.wrap(1, 43, &neighbour, AAD).unwrap();
    assert!(keyring.puncture(42).unwrap());
    assert!(!keyring.puncture(42).unwrap());
    assert!(keyring.is_erased(42));
    assert!(matches!(
        keyring.unwrap(1, 42, &wrapped, AAD),
        Err(VaultError::Erased { slot: 42 })
    ));
    assert!(matches!(
        keyring.wrap(1, 42, &DataKey::generate(), AAD),
        Err(VaultError::Erased { slot: 42 })
    ));
    let unwrapped = keyring.unwrap(1, 43, &wrapped_neighbour, AAD).unwrap();
    assert_eq!(unwrapped.as_bytes(), neighbour.as_bytes());
}

/// A backup's key is wrapped under the backup slot; no erasure can reach it, so a backup
/// stays restorable after its patients' erasures (without their data).
#[test]
fn the_backup_slot_wraps_and_is_never_erased() {
    let mut keyring = keyring();
    let backup_key = DataKey::generate();
    let wrapped = keyring
        .wrap(1, BACKUP_SLOT, &backup_key, b"hygie-backup/1 id")
        .unwrap();
    assert!(keyring.puncture(42).unwrap());
    assert!(keyring.puncture(BACKUP_SLOT - 1).unwrap());
    assert!(matches!(
        keyring.puncture(BACKUP_SLOT),
        Err(VaultError::ReservedSlot(BACKUP_SLOT))
    ));
    assert!(!keyring.is_erased(BACKUP_SLOT));
    let reloaded = Keyring::from_text(&keyring.to_text()).unwrap();
    let unwrapped = reloaded
        .unwrap(1, BACKUP_SLOT, &wrapped, b"hygie-backup/1 id")
        .unwrap();
    assert_eq!(unwrapped.as_bytes(), backup_key.as_bytes());
    assert!(matches!(
        reloaded.unwrap(1, BACKUP_SLOT, &wrapped, b"hygie-backup/1 other"),
        Err(VaultError::Corrupt)
    ));
}

#[test]
fn the_check_slot_and_out_of_range_slots_are_refused() {
    let mut keyring = keyring();
    let dek = DataKey::generate();
    assert!(matches!(
        keyring.wrap(1, CHECK_SLOT, &dek, AAD),
        Err(VaultError::ReservedSlot(CHECK_SLOT))
    ));
    assert!(matches!(
        keyring.puncture(CHECK_SLOT),
        Err(VaultError::ReservedSlot(CHECK_SLOT))
    ));
    assert!(matches!(
        keyring.wrap(1, 1 << 32, &dek, AAD),
        Err(VaultError::SlotOutOfRange(_))
    ));
    assert!(matches!(
        keyring.puncture(1 << 32),
        Err(VaultError::SlotOutOfRange(_))
    ));
    assert!(keyring.erased_slots().is_empty());
}

#[test]
fn a_saved_and_loaded_keyring_unwraps_what_it_wrapped() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vault.key");
    let mut keyring = keyring();
    keyring.puncture(7).unwrap();
    keyring.rotate(NOW_US + 1);
    let dek = DataKey::generate();
    let wrapped_1 = keyring.wrap(1, 42, &dek, AAD).unwrap();
    let wrapped_2 = keyring.wrap(2, 42, &dek, AAD).unwrap();
    keyring.save(&path).unwrap();

    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let entries: Vec<_> = fs::read_dir(directory.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "save leaves nothing but the key file");

    let loaded = Keyring::load(&path).unwrap();
    assert_eq!(loaded.installation(), "hospital.example");
    assert_eq!(loaded.generation_ids(), [1, 2]);
    assert_eq!(loaded.generations()[1].created_us, NOW_US + 1);
    assert_eq!(
        loaded.index_key().as_bytes(),
        keyring.index_key().as_bytes()
    );
    assert!(loaded.is_erased(7));
    for (generation, wrapped) in [(1, &wrapped_1), (2, &wrapped_2)] {
        let unwrapped = loaded.unwrap(generation, 42, wrapped, AAD).unwrap();
        assert_eq!(unwrapped.as_bytes(), dek.as_bytes());
    }
    assert_eq!(&*loaded.to_text(), &*keyring.to_text());
}

#[test]
fn save_replaces_the_file_and_a_stale_temporary() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vault.key");
    let temporary = directory.path().join("vault.key.tmp");
    write_with_mode(&temporary, "leftover", 0o644);
    let mut keyring = keyring();
    keyring.save(&path).unwrap();
    keyring.puncture(3).unwrap();
    keyring.save(&path).unwrap();
    assert!(!temporary.exists());
    assert!(Keyring::load(&path).unwrap().is_erased(3));
}

/// The documented property: erasure changes the key file. A copy saved before the
/// puncture still unwraps (so copies of the key file must not be kept); the file saved
/// after it does not.
#[test]
fn an_old_key_file_still_unwraps_but_the_new_one_does_not() {
    let directory = tempfile::tempdir().unwrap();
    let old_path = directory.path().join("old.key");
    let path = directory.path().join("vault.key");
    let mut keyring = keyring();
    let dek = DataKey::generate();
    let wrapped = keyring.wrap(1, 42, &dek, AAD).unwrap();
    keyring.save(&old_path).unwrap();
    keyring.puncture(42).unwrap();
    keyring.save(&path).unwrap();

    let old = Keyring::load(&old_path).unwrap();
    assert_eq!(
        old.unwrap(1, 42, &wrapped, AAD).unwrap().as_bytes(),
        dek.as_bytes()
    );
    let new = Keyring::load(&path).unwrap();
    assert!(matches!(
        new.unwrap(1, 42, &wrapped, AAD),
        Err(VaultError::Erased { slot: 42 })
    ));
    // Not only refused through the list of erased slots: the slot key is gone from the
    // tree itself, so the file without the list still cannot unwrap.
    let text = new.to_text();
    let without_list = text.replace("\"erased_slots\":[42],", "");
    assert_ne!(without_list, *text);
    let without_list = Keyring::from_text(&without_list).unwrap();
    assert!(without_list.erased_slots().is_empty());
    assert!(matches!(
        without_list.unwrap(1, 42, &wrapped, AAD),
        Err(VaultError::Erased { slot: 42 })
    ));
}

#[test]
fn rotate_keeps_erased_slots_punctured() {
    let mut keyring = keyring();
    keyring.puncture(42).unwrap();
    keyring.puncture(0).unwrap();
    let new = keyring.rotate(NOW_US + 5);
    assert_eq!(new, 2);
    assert_eq!(keyring.active_generation(), 2);
    assert_eq!(keyring.generation_ids(), [1, 2]);
    assert!(matches!(
        keyring.wrap(2, 42, &DataKey::generate(), AAD),
        Err(VaultError::Erased { slot: 42 })
    ));
    // Punctured in the tree itself: the cover set grew from the root.
    assert!(keyring.generations()[1].cover_len() > 1);
    let reloaded = Keyring::from_text(&keyring.to_text()).unwrap();
    assert!(reloaded.generations()[1].cover_len() > 1);
    // A fresh slot wraps under the new generation, and not under the old one's key.
    let dek = DataKey::generate();
    let wrapped = keyring.wrap(2, 43, &dek, AAD).unwrap();
    assert!(matches!(
        keyring.unwrap(1, 43, &wrapped, AAD),
        Err(VaultError::Corrupt)
    ));
}

#[test]
fn retire_drops_old_generations_but_not_the_active_one() {
    let mut keyring = keyring();
    let wrapped = keyring.wrap(1, 42, &DataKey::generate(), AAD).unwrap();
    assert!(matches!(
        keyring.retire(1),
        Err(VaultError::ActiveGeneration(1))
    ));
    keyring.rotate(NOW_US + 1);
    keyring.retire(1).unwrap();
    assert_eq!(keyring.generation_ids(), [2]);
    assert!(matches!(
        keyring.unwrap(1, 42, &wrapped, AAD),
        Err(VaultError::UnknownGeneration(1))
    ));
    assert!(matches!(
        keyring.retire(1),
        Err(VaultError::UnknownGeneration(1))
    ));
    assert_eq!(keyring.rotate(NOW_US + 2), 3);
}

#[test]
fn check_value_identifies_the_key_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vault.key");
    let mut keyring = keyring();
    let check = keyring.check_value(1).unwrap();
    assert_eq!(check.len(), 32);
    assert!(check.bytes().all(|byte| byte.is_ascii_hexdigit()));
    assert_ne!(
        Keyring::generate("hospital.example", NOW_US)
            .check_value(1)
            .unwrap(),
        check
    );

    keyring.puncture(42).unwrap();
    keyring.puncture(BACKUP_SLOT - 1).unwrap();
    assert_eq!(keyring.check_value(1).unwrap(), check);
    keyring.save(&path).unwrap();
    assert_eq!(Keyring::load(&path).unwrap().check_value(1).unwrap(), check);

    keyring.rotate(NOW_US + 1);
    assert_ne!(keyring.check_value(2).unwrap(), check);
    assert!(matches!(
        keyring.check_value(9),
        Err(VaultError::UnknownGeneration(9))
    ));
}

#[test]
fn load_refuses_a_file_others_may_read() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vault.key");
    write_with_mode(&path, &keyring().to_text(), 0o644);
    match Keyring::load(&path) {
        Err(error @ VaultError::ReadableByOthers { mode: 0o644, .. }) => {
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(
                message.contains("644") && message.contains("0600"),
                "{message}"
            );
        }
        other => panic!("expected ReadableByOthers, got {other:?}"),
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        Keyring::load(&path),
        Err(VaultError::ReadableByOthers { mode: 0o640, .. })
    ));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    Keyring::load(&path).unwrap();
}

#[test]
fn load_reports_a_missing_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("absent.key");
    match Keyring::load(&path) {
        Err(VaultError::Missing(missing)) => assert_eq!(missing, path),
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn load_refuses_malformed_json() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vault.key");
    write_with_mode(&path, "{\"format\": ", 0o600);
    malformed(Keyring::load(&path));
}

#[test]
fn malformed_files_name_the_field_and_never_the_key() {
    let text = keyring().to_text();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let index_key = file["index_key"].as_str().unwrap().to_owned();
    let node_key = file["generations"][0]["nodes"][0][2]
        .as_str()
        .unwrap()
        .to_owned();
    let edit = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut file = file.clone();
        change(&mut file);
        malformed(Keyring::from_text(&file.to_string()))
    };

    let message = edit(&|file| file["format"] = "hygie-vault-keyring/2".into());
    assert!(
        message.contains("format") && message.contains(FORMAT),
        "{message}"
    );
    let message = edit(&|file| file["index_key"] = "not base64!".into());
    assert!(message.contains("index_key"), "{message}");
    let message = edit(&|file| file["index_key"] = "AAAA".into());
    assert!(
        message.contains("index_key") && message.contains("3 bytes"),
        "{message}"
    );
    let message = edit(&|file| file["generations"][0]["nodes"][0][2] = "AAAA".into());
    assert!(
        message.contains("generations[0]") && message.contains("nodes[0]"),
        "{message}"
    );
    let message = edit(&|file| {
        file.as_object_mut().unwrap().remove("index_key");
    });
    assert!(message.contains("index_key"), "{message}");
    let message = edit(&|file| file["generations"] = serde_json::json!([]));
    assert!(message.contains("generations"), "{message}");
    let message = edit(&|file| file["erased_slots"] = serde_json::json!([5]));
    assert!(message.contains("erased slot 5"), "{message}");
    // A key where a number belongs: serde_json would quote it; the message must not.
    let message = edit(&|file| file["generations"][0]["id"] = node_key.clone().into());
    assert!(!message.contains(&node_key), "{message}");
    let message = edit(&|file| file["unexpected"] = index_key.clone().into());
    assert!(message.contains("unexpected"), "{message}");

    let missing_format = edit(&|file| {
        file.as_object_mut().unwrap().remove("format");
    });
    assert!(missing_format.contains("format"), "{missing_format}");
}

#[test]
fn debug_and_errors_never_show_keys() {
    let mut keyring = keyring();
    keyring.puncture(42).unwrap();
    let text = keyring.to_text();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let debug = format!("{keyring:?}");
    assert!(
        !debug.contains(file["index_key"].as_str().unwrap()),
        "{debug}"
    );
    for node in file["generations"][0]["nodes"].as_array().unwrap() {
        assert!(!debug.contains(node[2].as_str().unwrap()), "{debug}");
    }
    assert!(debug.contains("hospital.example"));
}

#[test]
fn from_text_reads_json_and_its_base64() {
    let keyring = keyring();
    let text = keyring.to_text();
    let check = keyring.check_value(1).unwrap();
    assert_eq!(
        Keyring::from_text(&text).unwrap().check_value(1).unwrap(),
        check
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    assert_eq!(
        Keyring::from_text(&encoded)
            .unwrap()
            .check_value(1)
            .unwrap(),
        check
    );
    // As `base64` prints it: lines of 76 characters.
    let wrapped: String = encoded
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
        .collect();
    assert_eq!(
        Keyring::from_text(&wrapped)
            .unwrap()
            .check_value(1)
            .unwrap(),
        check
    );
    malformed(Keyring::from_text("not a key at all"));
}

#[test]
fn the_file_matches_the_documented_format() {
    let mut keyring = keyring();
    keyring.puncture(42).unwrap();
    let file: serde_json::Value = serde_json::from_str(&keyring.to_text()).unwrap();
    assert_eq!(file["format"], FORMAT);
    assert_eq!(file["installation"], "hospital.example");
    assert_eq!(file["erased_slots"], serde_json::json!([42]));
    let generation = &file["generations"][0];
    assert_eq!(generation["id"], 1);
    assert_eq!(generation["created_us"], NOW_US);
    let nodes = generation["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 32);
    for node in nodes {
        let key = node[2].as_str().unwrap();
        assert_eq!(key.len(), 44, "32 bytes in padded standard base64");
        assert!(key.ends_with('='));
    }
    // A file without erased_slots, as in the format's first example, loads.
    let mut fresh: serde_json::Value = serde_json::from_str(&self::keyring().to_text()).unwrap();
    fresh.as_object_mut().unwrap().remove("erased_slots");
    Keyring::from_text(&fresh.to_string()).unwrap();
}

/// Pins the check value (stored in databases, so it must never change for a given key
/// file) and the file format to values computed outside this crate (Python's `hmac`).
#[test]
fn check_value_matches_a_known_answer() {
    let text = r#"{"format": "hygie-vault-keyring/1", "installation": "hospital.example",
        "index_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "generations": [{"id": 1, "created_us": 0,
            "nodes": [[0, 0, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="]]}]}"#;
    let keyring = Keyring::from_text(text).unwrap();
    assert_eq!(
        keyring.check_value(1).unwrap(),
        "42b6f0861636c885611fc9c442e0ac5a"
    );
    assert_eq!(keyring.index_key().as_bytes(), &[1; 32]);
}
