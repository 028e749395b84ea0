//! `pvmctl clean`: manifests of processes that died.

use super::*;

/// `pvmctl clean`.
pub(crate) fn clean(dirs: &[PathBuf]) -> Result<(), Failure> {
    let removed = Probe::clean_stale_in(dirs);
    if removed.is_empty() {
        note("no stale manifests");
        return Ok(());
    }
    let text: String = removed
        .iter()
        .map(|p| format!("removed {}\n", printable(&p.display().to_string())))
        .collect();
    emit(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_limits() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("24h"), Ok(MAX_INTERVAL));
        for bad in [
            "",
            "1",
            "0s",
            "s",
            "-1s",
            "1.5s",
            "25h",
            "1x",
            "99999999999999999999h",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn assignments_need_block_field_and_equals() {
        let a = parse_assignment("tuning.name=a=b").unwrap();
        assert_eq!((&*a.block, &*a.field, &*a.value), ("tuning", "name", "a=b"));
        for bad in ["tuning.max", "max=1", ".f=1", "b.=1"] {
            assert!(parse_assignment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(192)), "3m12s");
        assert_eq!(human(Duration::from_secs(7500)), "2h05m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d04h");
        assert_eq!(interval_text(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn labels_and_numbers_follow_the_text_format() {
        assert_eq!(escape_label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        assert_eq!(prometheus_number(&Value::Bool(true)), Some("1".into()));
        assert_eq!(
            prometheus_number(&Value::F64(f64::NEG_INFINITY)),
            Some("-Inf".into())
        );
        assert_eq!(
            prometheus_number(&Value::U64(u64::MAX)),
            Some(u64::MAX.to_string())
        );
        assert_eq!(prometheus_number(&Value::Str("x".into())), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(printable("héllo"), "héllo");
    }

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "c".to_owned()],
            vec!["aaa".to_owned(), "b".to_owned(), "c".to_owned()],
        ];
        assert_eq!(columns(&rows, "  "), "  a    bb  c\n  aaa  b   c\n");
    }

    #[test]
    fn exit_codes_follow_error_kinds() {
        assert_eq!(exit_code(ErrorKind::PermissionDenied), 3);
        assert_eq!(exit_code(ErrorKind::InvalidInput), 4);
        assert_eq!(exit_code(ErrorKind::Inconsistent), 5);
        assert_eq!(exit_code(ErrorKind::NotFound), 1);
        assert_eq!(exit_code(ErrorKind::Io), 1);
    }
}
