//! Service credentials made at first start, so a broker we start is never open.
//!
//! A hub or a demo region that runs the embedded broker without an operator-written access
//! file still refuses anonymous clients: it asks for [`GeneratedCredentials::ensure`] with
//! the identities it needs (itself, each gateway of its directory, a read-only viewer, ...).
//! Each gets a random password, kept in `secrets.toml` (mode 0600) in the given directory and
//! reused at the next start, so gateways on other machines keep working after a restart. The
//! matching `access.toml` (argon2 hashes and roles) sits beside it, in the format of
//! `deploy/access.toml`, so `demolab-broker-files --access … --secrets …` turns the very same
//! accounts into Mosquitto's files.
//!
//! The passwords are 128 random bits, so their hashes use argon2's smallest cost: a slow hash
//! protects guessable human passwords, and these cannot be guessed; a cheap one keeps a flood
//! of CONNECTs from costing the broker tens of megabytes each.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};

use super::mosquitto::Secrets;
use super::{AccessConfig, AccessError, AccessFile, UserEntry};

/// The plain passwords (owner-only).
pub const SECRETS_FILE: &str = "secrets.toml";
/// The roles and argon2 hashes, as `deploy/access.toml`.
pub const ACCESS_FILE: &str = "access.toml";
/// Random bytes per password: 128 bits, 32 hex digits (nothing a shell or a command line
/// could take for an option or a quote).
const PASSWORD_BYTES: usize = 16;

/// The accounts of a broker we started, with their passwords.
#[derive(Debug, Clone)]
pub struct GeneratedCredentials {
    dir: PathBuf,
    access: AccessConfig,
    secrets: Secrets,
}

impl GeneratedCredentials {
    /// Makes sure every identity in `wanted` has a password in `dir/secrets.toml`, creating
    /// the directory and new passwords as needed and keeping existing ones, then writes both
    /// files. Identities no longer wanted are removed from both files. `password_hash` of the
    /// entries is ignored.
    pub fn ensure(dir: &Path, wanted: &[UserEntry]) -> Result<Self, AccessError> {
        let io_error = |path: &Path, source: std::io::Error| AccessError::Read {
            path: path.display().to_string(),
            source,
        };
        create_private_dir(dir).map_err(|e| io_error(dir, e))?;
        let secrets_path = dir.join(SECRETS_FILE);
        let mut known = if secrets_path.exists() {
            Secrets::load(&secrets_path)?
        } else {
            Secrets::default()
        };
        let mut passwords = BTreeMap::new();
        let mut users = Vec::with_capacity(wanted.len());
        for entry in wanted {
            let password = match known.passwords.remove(&entry.name) {
                Some(existing) if !existing.is_empty() => existing,
                _ => random_password()?,
            };
            users.push(UserEntry {
                password_hash: cheap_hash(&password)?,
                ..entry.clone()
            });
            passwords.insert(entry.name.clone(), password);
        }
        let file = AccessFile { users };
        // Validating before writing keeps a bad identity (say, a gateway id that is not one)
        // from leaving half-written files behind.
        let access = AccessConfig::from_file(&file)?;
        let secrets = Secrets { passwords };
        let secrets_text = format!(
            "# Passwords of the MQTT accounts this service generated; kept across restarts.\n\
             # Give each gateway its own entry (its gateway.toml names an environment variable\n\
             # holding it). Delete a line to get a new password at the next start.\n{}",
            toml::to_string(&secrets).map_err(|e| AccessError::Hash(e.to_string()))?
        );
        let access_text = format!(
            "# Generated with {SECRETS_FILE}; rewritten at every start. For Mosquitto:\n\
             #   demolab-broker-files --access {ACCESS_FILE} --secrets {SECRETS_FILE} --out DIR\n{}",
            toml::to_string(&file).map_err(|e| AccessError::Hash(e.to_string()))?
        );
        write_private(&secrets_path, &secrets_text).map_err(|e| io_error(&secrets_path, e))?;
        let access_path = dir.join(ACCESS_FILE);
        write_private(&access_path, &access_text).map_err(|e| io_error(&access_path, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            access,
            secrets,
        })
    }

    /// The accounts, for [`crate::BrokerConfig::access`].
    pub fn access(&self) -> &AccessConfig {
        &self.access
    }

    /// The password of `user`.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.secrets.passwords.get(user).map(String::as_str)
    }

    /// Where the plain passwords are.
    pub fn secrets_path(&self) -> PathBuf {
        self.dir.join(SECRETS_FILE)
    }

    /// Where the roles and hashes are.
    pub fn access_path(&self) -> PathBuf {
        self.dir.join(ACCESS_FILE)
    }
}

fn random_password() -> Result<String, AccessError> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    rand::fill(&mut bytes);
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// argon2id at its smallest cost (see the module docs for why that is enough here).
fn cheap_hash(password: &str) -> Result<String, AccessError> {
    let params = Params::new(Params::MIN_M_COST, 1, 1, None)
        .map_err(|e| AccessError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AccessError::Hash(e.to_string()))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new,
/// never half of one; owner-only from the first byte.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(name: &str, role: &str, lab: Option<&str>) -> UserEntry {
        UserEntry {
            name: name.into(),
            role: role.into(),
            lab: lab.map(Into::into),
            ..UserEntry::default()
        }
    }

    #[test]
    fn passwords_survive_a_restart_and_match_their_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = [
            entry("demolab-hub", "hub", None),
            entry("gw-a", "gateway", Some("lab-a")),
        ];
        let first = GeneratedCredentials::ensure(dir.path(), &wanted).unwrap();
        let second = GeneratedCredentials::ensure(dir.path(), &wanted).unwrap();
        let password = first.password("gw-a").unwrap();
        assert_eq!(password.len(), 32);
        assert_eq!(second.password("gw-a"), Some(password));
        assert_ne!(first.password("demolab-hub"), Some(password));
        let user = second.access().user("gw-a").unwrap();
        assert!(user.verify_password(password.as_bytes()));
        assert!(!user.verify_password(b"guess"));
        // The file on disk is what a Mosquitto export reads.
        let reloaded = AccessConfig::load(&second.access_path()).unwrap();
        assert!(
            reloaded
                .user("gw-a")
                .unwrap()
                .verify_password(password.as_bytes())
        );
    }

    #[test]
    fn the_generated_files_export_to_mosquitto() {
        let dir = tempfile::tempdir().unwrap();
        let creds = GeneratedCredentials::ensure(
            dir.path(),
            &[
                entry("viewer", "viewer", None),
                entry("gw-a", "gateway", Some("a")),
            ],
        )
        .unwrap();
        let access = AccessConfig::load(&creds.access_path()).unwrap();
        let secrets = Secrets::load(&creds.secrets_path()).unwrap();
        let file = super::super::mosquitto::mosquitto_password_file(&access, &secrets).unwrap();
        assert_eq!(file.lines().count(), 2);
        let acl = super::super::mosquitto::mosquitto_acl(&access);
        assert!(
            acl.contains("user viewer\ntopic read spBv1.0/#\ntopic read demolab/#"),
            "{acl}"
        );
    }

    #[test]
    fn the_secrets_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let creds = GeneratedCredentials::ensure(
            &dir.path().join("mqtt"),
            &[entry("viewer", "viewer", None)],
        )
        .unwrap();
        let mode = fs::metadata(creds.secrets_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(dir.path().join("mqtt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn identities_no_longer_wanted_lose_their_password() {
        let dir = tempfile::tempdir().unwrap();
        GeneratedCredentials::ensure(
            dir.path(),
            &[
                entry("viewer", "viewer", None),
                entry("gw-a", "gateway", Some("a")),
            ],
        )
        .unwrap();
        let later =
            GeneratedCredentials::ensure(dir.path(), &[entry("viewer", "viewer", None)]).unwrap();
        assert_eq!(later.password("gw-a"), None);
        assert!(later.access().user("gw-a").is_none());
        let text = fs::read_to_string(later.secrets_path()).unwrap();
        assert!(!text.contains("gw-a"), "{text}");
    }

    #[test]
    fn an_invalid_identity_names_its_key_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = GeneratedCredentials::ensure(dir.path(), &[entry("gw a", "gateway", Some("a"))])
            .unwrap_err();
        assert!(err.to_string().contains("users[0].name"), "{err}");
        assert!(!dir.path().join(SECRETS_FILE).exists());
    }
}
