//! Property tests: event validation and CSV import take any input without
//! panicking, accept exactly what is well-formed, and account for every row.

mod common;

use proptest::prelude::*;
use stagecraft::pipeline::EventInput;

const NOW: i64 = 1_732_406_400_000;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<String>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(|t| serde_json::json!({ "time": t })),
        Just(serde_json::json!([1, 2])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn event_validation_accepts_exactly_the_well_formed(
        kind in prop_oneof!["[a-z][a-z0-9_-]{0,10}", any::<String>()],
        channel in proptest::option::of(prop_oneof!["[a-z]{1,8}", any::<String>()]),
        at in proptest::option::of(any::<i64>()),
        amount in proptest::option::of(any::<i64>()),
        fields in proptest::collection::btree_map(prop_oneof!["[a-z_]{1,8}", any::<String>()], json_value(), 0..4),
    ) {
        let input = EventInput { kind: kind.clone(), channel: channel.clone(), at, amount_cents: amount, fields: fields.clone() };
        // Well-formed, said independently of `validate`'s own code.
        let slug = |s: &str| (1..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let amount_ok = match (kind.as_str(), amount) {
            ("order", None) => false,
            ("order", Some(a)) => (0..=1_000_000_000_000).contains(&a),
            (_, Some(a)) => a.abs() <= 1_000_000_000_000,
            _ => true,
        };
        let well_formed = slug(&kind)
            && channel.as_deref().is_none_or(slug)
            && at.is_none_or(|t| (0..=NOW + 86_400_000).contains(&t))
            && amount_ok
            && fields.len() <= stagecraft::domain::MAX_FIELDS
            && fields.iter().all(|(k, v)| slug(k) && stagecraft::domain::field_value_from_json(k, v).is_ok());
        prop_assert_eq!(input.validate(NOW).is_ok(), well_formed, "{:?}", input.validate(NOW).err());
        match input.validate(NOW) {
            Ok(e) => {
                prop_assert!(stagecraft::domain::is_slug(&e.kind));
                prop_assert!(channel.as_deref().is_none_or(stagecraft::domain::is_slug));
                prop_assert!(e.at >= 0 && e.at <= NOW + 86_400_000);
                if e.kind == "order" {
                    prop_assert!(e.amount_cents.is_some_and(|a| a >= 0));
                }
                prop_assert_eq!(e.fields.len(), fields.len());
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }
}

fn csv_cell() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,6}",
        "\"[a-z ,]{0,6}\"",
        any::<String>().prop_map(|s| s.replace(['\n', '\r'], " ")),
        Just("2024-03-01".to_string())
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn csv_import_accounts_for_every_row(rows in proptest::collection::vec(proptest::collection::vec(csv_cell(), 0..5), 0..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = stagecraft::store::Store::connect(&format!("sqlite:{}", dir.path().join("p.db").display())).await.unwrap();
            let runtime = stagecraft::runtime::Runtime::new(common::test_limits(), None).unwrap();
            let crm = stagecraft::Crm::new(store, stagecraft::packs::Packs::new(runtime));
            crm.tokens().create("t", "test", stagecraft::domain::Role::Admin, "p").await.unwrap();
            let mut text = String::from("id,name,tags,industry\n");
            for r in &rows {
                text.push_str(&r.join(","));
                text.push('\n');
            }
            let report = crm.imports().import_customers("t", text.as_bytes(), &|_| {}).await.unwrap();
            // Every row the CSV reader finds (quoted cells may span lines, blank lines
            // are none) is imported, already there, or an error; none is lost.
            let simple = rows.iter().flatten().all(|c| !c.contains('"'));
            if simple {
                let lines = rows.iter().filter(|r| !r.join(",").is_empty()).count() as u64;
                assert_eq!(report.rows, lines, "{text:?}");
            }
            assert_eq!(report.imported + report.already_present + report.error_count, report.rows, "{report:?}");
            let mut conn = crm.store().conn().await.unwrap();
            let stored = stagecraft::store::customer_ids(&mut conn, "t", None).await.unwrap();
            assert_eq!(stored.len() as u64, report.imported, "good rows kept, bad rows left out");
        });
    }
}
