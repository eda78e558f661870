//! Which keys exist, and what to say about one that does not: a misspelt `SECRETD_*`
//! variable or an unknown key in the config file is named, with the closest real key.
//!
//! The keys are not listed by hand: they are the field names serde's derive hands to the
//! deserializer of [`Settings`], [`FederationSettings`] and [`PeerConfig`], so a new
//! setting is known here the moment it exists.

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::{FederationSettings, PeerConfig, Settings};

/// Where the keys are documented, for the end of every message about an unknown one.
const WHERE_DOCUMENTED: &str = "README \"Configuration\"";

/// The variable that names the config file (`--config`), not a setting.
pub(super) const CONFIG_VARIABLE: &str = "SECRETD_CONFIG";

/// The prefix of `secretd-chat`'s variables (`SECRETD_CHAT_PASSWORD`, `_STATE`, `_TOKEN`):
/// the client's, not settings, so a shell set up for both programs works with both.
pub(super) const CLIENT_PREFIX: &str = "SECRETD_CHAT_";

/// The prefix of the test suite's hooks into the real binary (e.g.
/// `SECRETD_TESTHOOK_KT_PAUSE_MS`, read by `kt/`): not settings, never documented as such.
pub(super) const TESTHOOK_PREFIX: &str = "SECRETD_TESTHOOK_";

/// The field names of a struct deriving `Deserialize`, as serde passes them to
/// `deserialize_struct`.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field names it is asked for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// The top-level keys of the config file.
pub(super) fn top_level() -> &'static [&'static str] {
    field_names::<Settings>()
}

/// The keys of the `[federation]` table.
pub(super) fn federation() -> &'static [&'static str] {
    field_names::<FederationSettings>()
}

/// The keys of one `[[federation.peers]]` entry.
fn peer() -> &'static [&'static str] {
    field_names::<PeerConfig>()
}

/// The `[federation]` keys that have environment twins (all but the peer list).
pub(super) fn federation_scalars() -> impl Iterator<Item = &'static str> {
    federation().iter().copied().filter(|k| *k != "peers")
}

/// Every `SECRETD_*` variable that is a setting: `SECRETD_<KEY>` for each top-level key
/// and `SECRETD_FEDERATION_<KEY>` for each scalar key of `[federation]`.
fn variables() -> Vec<String> {
    top_level()
        .iter()
        .filter(|k| **k != "federation")
        .map(|k| format!("SECRETD_{}", k.to_ascii_uppercase()))
        .chain(
            federation_scalars().map(|k| format!("SECRETD_FEDERATION_{}", k.to_ascii_uppercase())),
        )
        .collect()
}

/// Checks the names of the `SECRETD_*` variables: each must be a setting's twin (or
/// `SECRETD_CONFIG`). The error names the first one that is not and the closest that is.
pub(super) fn check_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let known = variables();
    for name in names {
        let upper = name.to_ascii_uppercase();
        if upper == CONFIG_VARIABLE || known.contains(&upper) {
            continue;
        }
        let hint = closest(&upper, known.iter().map(String::as_str))
            .map(|k| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        return Err(format!(
            "the environment variable {name} is not a setting{hint}; every SECRETD_* \
             variable must name a key listed in {WHERE_DOCUMENTED} ({CONFIG_VARIABLE} names \
             the config file)"
        ));
    }
    Ok(())
}

/// Checks the keys of a config file (`file` names it in the message): the top level,
/// `[federation]` and each `[[federation.peers]]` entry.
pub(super) fn check_file(
    file: &str,
    table: &config::Map<String, config::Value>,
) -> Result<(), String> {
    let unknown = |key: &str, shown: String, known: &[&str]| {
        let hint = closest(key, known.iter().copied())
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        Err(format!(
            "the config file {file} has an unknown key `{shown}`{hint}; the keys are listed \
             in {WHERE_DOCUMENTED}"
        ))
    };
    for (key, value) in table {
        if !top_level().contains(&key.as_str()) {
            return unknown(key, key.clone(), top_level());
        }
        // A value of the wrong type is left to deserializing, which names the key.
        let Some(federation_table) = (key == "federation")
            .then(|| value.clone().into_table().ok())
            .flatten()
        else {
            continue;
        };
        for (fkey, fvalue) in &federation_table {
            if !federation().contains(&fkey.as_str()) {
                return unknown(fkey, format!("federation.{fkey}"), federation());
            }
            let Some(peers) = (fkey == "peers")
                .then(|| fvalue.clone().into_array().ok())
                .flatten()
            else {
                continue;
            };
            for (i, entry) in peers.into_iter().enumerate() {
                let entry = entry.into_table().unwrap_or_default();
                if let Some(pkey) = entry.keys().find(|k| !peer().contains(&k.as_str())) {
                    return unknown(pkey, format!("federation.peers[{i}].{pkey}"), peer());
                }
            }
        }
    }
    Ok(())
}

/// The known name closest to `name` (case aside), when it is close enough to be a
/// misspelling of it: a third of the name may be wrong, at least two letters (`listn`,
/// `lisen`, `jwt_secrt`, `databse_url`; `db_url` is close to nothing).
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .map(|k| (edit_distance(&name, &k.to_ascii_lowercase()), k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= (name.len() / 3).max(2))
        .map(|(_, k)| k)
}

/// Levenshtein distance between two ASCII-ish strings (by `char`).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_structs() {
        assert!(top_level().contains(&"listen"));
        assert!(top_level().contains(&"max_request_bytes"));
        assert!(top_level().contains(&"federation"));
        assert_eq!(
            peer(),
            [
                "server_name",
                "endpoint",
                "public_key",
                "client_endpoint",
                "ca_file",
                "allow_insecure"
            ]
        );
        assert!(federation_scalars().any(|k| k == "request_timeout_secs"));
        assert!(!federation_scalars().any(|k| k == "peers"));
        let vars = variables();
        assert!(vars.contains(&"SECRETD_JWT_SECRET".to_string()));
        assert!(vars.contains(&"SECRETD_FEDERATION_ENABLED".to_string()));
        assert!(!vars.contains(&"SECRETD_FEDERATION".to_string()));
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_setting() {
        check_variables([
            "SECRETD_LISTEN",
            "SECRETD_CONFIG",
            "SECRETD_FEDERATION_ENABLED",
        ])
        .unwrap();
        let err = check_variables(["SECRETD_LISTEN", "SECRETD_LISTN"]).unwrap_err();
        assert!(
            err.starts_with(
                "the environment variable SECRETD_LISTN is not a setting (did you mean \
                 SECRETD_LISTEN?); every SECRETD_* variable must name a key listed in README"
            ),
            "{err}"
        );
        let err = check_variables(["SECRETD_FEDERATION_ENABELD"]).unwrap_err();
        assert!(
            err.contains("(did you mean SECRETD_FEDERATION_ENABLED?)"),
            "{err}"
        );
        let err = check_variables(["SECRETD_DB_URL"]).unwrap_err();
        assert!(!err.contains("did you mean"), "{err}");
        assert!(check_variables(["SECRETD_FEDERATION"]).is_err());
    }

    fn file(toml: &str) -> Result<(), String> {
        use config::Source;
        let table = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .collect()
            .unwrap();
        check_file("x.toml", &table)
    }

    #[test]
    fn unknown_file_keys_are_named_with_the_file_and_the_closest_key() {
        file("listen = \"127.0.0.1:1\"\n[federation]\nenabled = true\n").unwrap();
        let err = file("lisen = \"x\"\n").unwrap_err();
        assert!(
            err.starts_with(
                "the config file x.toml has an unknown key `lisen` (did you mean `listen`?)"
            ),
            "{err}"
        );
        let err = file("[federation]\nenabld = true\n").unwrap_err();
        assert!(
            err.contains("`federation.enabld` (did you mean `enabled`?)"),
            "{err}"
        );
        let err = file("[[federation.peers]]\nserver_name = \"b\"\nendpont = \"http://b:1\"\n")
            .unwrap_err();
        assert!(
            err.contains("`federation.peers[0].endpont` (did you mean `endpoint`?)"),
            "{err}"
        );
        let err = file("completely_different = 1\n").unwrap_err();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
