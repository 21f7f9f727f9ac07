//! The search index and queries, the same tests on SQLite and on PostgreSQL.

use hygie_store::testing::TestBackend;
use hygie_store::{
    Filter, IndexCell, IndexRow, IndexTable, NewVersion, PagePosition, RangeOp, SearchSpec, SortBy,
    StoreError, StoreExt, Test,
};

type Backend = TestBackend;

hygie_store::on_both_backends!(
    every_kind_of_test_finds_exactly_its_rows,
    date_prefixes_follow_the_range_semantics,
    chains_reverse_chains_and_compartments,
    composites_match_within_one_group,
    keyset_pages_neither_skip_nor_repeat,
    includes_follow_references_both_ways,
    deleted_and_replaced_rows_are_not_found,
    hub_settings_are_kept,
    nul_characters_are_indexed_and_found,
    thousands_of_alternative_codes_are_one_list,
    blind_terms_are_found_by_equality_and_follow_their_resource,
    blind_terms_share_the_fate_of_their_unit_in_a_batch,
    queued_terms_are_written_before_a_search_they_could_change,
    an_update_rewrites_only_the_rows_that_changed,
    references_elsewhere_are_found_by_their_spelling,
    dense_filters_page_in_id_order_exactly_as_the_driven_query,
    a_resources_patients_follow_every_write_of_its_index,
    a_lone_token_page_answers_as_the_general_query,
    the_patients_of_a_resource_just_read_are_its_current_ones,
);

fn row(param: &str, cell: IndexCell) -> IndexRow {
    IndexRow {
        param: param.into(),
        group: 0,
        cell,
    }
}

fn token(param: &str, system: &str, code: &str) -> IndexRow {
    row(
        param,
        IndexCell::Token {
            system: system.into(),
            code: code.into(),
        },
    )
}

/// The hub folds accents away; these tests only need it for "É".
fn string(param: &str, text: &str) -> IndexRow {
    row(
        param,
        IndexCell::String {
            normalized: text.to_lowercase().replace('é', "e"),
            exact: text.into(),
        },
    )
}

fn date(param: &str, low: i64, high: i64) -> IndexRow {
    row(param, IndexCell::Date { low, high })
}

fn reference(param: &str, target_type: &str, target_id: &str) -> IndexRow {
    row(
        param,
        IndexCell::Reference {
            target_type: target_type.into(),
            target_id: target_id.into(),
            url: format!("{target_type}/{target_id}"),
        },
    )
}

async fn put(store: &hygie_store::SharedStore, ty: &str, id: &str, index: Vec<IndexRow>) {
    let (ty, id) = (ty.to_owned(), id.to_owned());
    store
        .run(move |tx| {
            let version = tx.head(&ty, &id)?.map_or(1, |head| head.version + 1);
            tx.put_version(&NewVersion {
                resource_type: &ty,
                id: &id,
                version,
                last_updated_us: version,
                deleted: false,
                body: b"{}",
                index: &index,
                key_id: None,
            })
        })
        .await
        .unwrap();
}

/// Writes `version` of `ty/id` as a deletion.
async fn delete(store: &hygie_store::SharedStore, ty: &str, id: &str, version: i64) {
    let (ty, id) = (ty.to_owned(), id.to_owned());
    store
        .run(move |tx| {
            tx.put_version(&NewVersion {
                resource_type: &ty,
                id: &id,
                version,
                last_updated_us: version,
                deleted: true,
                body: b"",
                index: &[],
                key_id: None,
            })
        })
        .await
        .unwrap();
}

async fn ids(store: &hygie_store::SharedStore, ty: &str, filters: Vec<Filter>) -> Vec<String> {
    let spec = SearchSpec {
        resource_type: ty.into(),
        filters,
        sort: vec![],
        position: None,
        limit: 1000,
    };
    let (spec2, ty2) = (spec.clone(), ty.to_owned());
    let hits = store.run(move |tx| tx.search(&spec)).await.unwrap();
    let count = store
        .run(move |tx| tx.count(&ty2, &spec2.filters))
        .await
        .unwrap();
    assert_eq!(count as usize, hits.len(), "count agrees with the rows");
    hits.into_iter().map(|hit| hit.id).collect()
}

fn matching(param: &str, tests: Vec<Test>) -> Filter {
    Filter::Match {
        param: param.into(),
        tests,
        negate: false,
    }
}

/// `param` has a token of `code`, in any system.
fn code_is(param: &str, code: &str) -> Filter {
    matching(
        param,
        vec![Test::Token {
            system: None,
            code: Some(code.into()),
        }],
    )
}

async fn every_kind_of_test_finds_exactly_its_rows(backend: Backend) {
    let store = backend.store;
    put(
        &store,
        "Patient",
        "a",
        vec![
            string("family", "Émile"),
            token(
                "gender",
                "http://hl7.org/fhir/administrative-gender",
                "male",
            ),
            row(
                "weight",
                IndexCell::Quantity {
                    system: "http://unitsofmeasure.org".into(),
                    code: "kg".into(),
                    value: 70.0,
                    low: 69.5,
                    high: 70.5,
                },
            ),
            row(
                "rank",
                IndexCell::Number {
                    value: 3.0,
                    low: 2.5,
                    high: 3.5,
                },
            ),
            row(
                "url",
                IndexCell::Uri {
                    value: "http://example.org/fhir/a".into(),
                },
            ),
        ],
    )
    .await;
    put(
        &store,
        "Patient",
        "b",
        vec![
            string("family", "Emmanuel"),
            token(
                "gender",
                "http://hl7.org/fhir/administrative-gender",
                "female",
            ),
        ],
    )
    .await;
    put(&store, "Patient", "c", vec![string("family", "Dupont")]).await;
    put(&store, "Observation", "o", vec![string("family", "Emile")]).await;

    let family = |test| vec![matching("family", vec![test])];
    assert_eq!(
        ids(
            &store,
            "Patient",
            family(Test::StringStartsWith("em".into()))
        )
        .await,
        ["a", "b"]
    );
    assert_eq!(
        ids(
            &store,
            "Patient",
            family(Test::StringContains("pon".into()))
        )
        .await,
        ["c"]
    );
    assert_eq!(
        ids(&store, "Patient", family(Test::StringExact("Émile".into()))).await,
        ["a"]
    );
    assert!(
        ids(&store, "Patient", family(Test::StringExact("émile".into())))
            .await
            .is_empty()
    );
    // OR within a parameter, AND across parameters.
    let either = matching(
        "family",
        vec![
            Test::StringStartsWith("dup".into()),
            Test::StringStartsWith("emm".into()),
        ],
    );
    assert_eq!(
        ids(&store, "Patient", vec![either.clone()]).await,
        ["b", "c"]
    );
    let female = code_is("gender", "female");
    assert_eq!(
        ids(&store, "Patient", vec![either, female.clone()]).await,
        ["b"]
    );
    // :not finds resources with no matching row, including those without the element.
    let not_female = Filter::Match {
        param: "gender".into(),
        tests: vec![Test::Token {
            system: None,
            code: Some("female".into()),
        }],
        negate: true,
    };
    assert_eq!(ids(&store, "Patient", vec![not_female]).await, ["a", "c"]);
    let wrong_system = matching(
        "gender",
        vec![Test::Token {
            system: Some("http://other".into()),
            code: Some("female".into()),
        }],
    );
    assert!(ids(&store, "Patient", vec![wrong_system]).await.is_empty());
    let missing = Filter::Missing {
        param: "gender".into(),
        table: IndexTable::Token,
        missing: true,
    };
    assert_eq!(ids(&store, "Patient", vec![missing]).await, ["c"]);
    let quantity = |op, low, high, code: &str| {
        vec![matching(
            "weight",
            vec![Test::Quantity {
                op,
                low,
                high,
                system: None,
                code: Some(code.into()),
            }],
        )]
    };
    assert_eq!(
        ids(&store, "Patient", quantity(RangeOp::Gt, 60.0, 60.0, "kg")).await,
        ["a"]
    );
    assert!(
        ids(&store, "Patient", quantity(RangeOp::Gt, 80.0, 80.0, "kg"))
            .await
            .is_empty()
    );
    assert!(
        ids(&store, "Patient", quantity(RangeOp::Gt, 60.0, 60.0, "g"))
            .await
            .is_empty()
    );
    let number = vec![matching(
        "rank",
        vec![Test::Number {
            op: RangeOp::Eq,
            low: 2.0,
            high: 4.0,
        }],
    )];
    assert_eq!(ids(&store, "Patient", number).await, ["a"]);
    let below = vec![matching(
        "url",
        vec![Test::UriBelow("http://example.org/fhir".into())],
    )];
    assert_eq!(ids(&store, "Patient", below).await, ["a"]);
    let exact_uri = vec![matching(
        "url",
        vec![Test::Uri("http://example.org/fhir".into())],
    )];
    assert!(ids(&store, "Patient", exact_uri).await.is_empty());
    let by_id = vec![Filter::Ids(vec!["c".into(), "zz".into()])];
    assert_eq!(ids(&store, "Patient", by_id).await, ["c"]);
}

async fn date_prefixes_follow_the_range_semantics(backend: Backend) {
    let store = backend.store;
    // Stored ranges: early [0,9], middle [10,19], late [20,29], open [15, MAX].
    put(&store, "Encounter", "early", vec![date("date", 0, 9)]).await;
    put(&store, "Encounter", "middle", vec![date("date", 10, 19)]).await;
    put(&store, "Encounter", "late", vec![date("date", 20, 29)]).await;
    put(
        &store,
        "Encounter",
        "open",
        vec![date("date", 15, i64::MAX)],
    )
    .await;
    let search = |op| {
        let store = store.clone();
        async move {
            ids(
                &store,
                "Encounter",
                vec![matching(
                    "date",
                    vec![Test::Date {
                        op,
                        low: 10,
                        high: 19,
                    }],
                )],
            )
            .await
        }
    };
    assert_eq!(search(RangeOp::Eq).await, ["middle"]);
    assert_eq!(search(RangeOp::Ne).await, ["early", "late", "open"]);
    assert_eq!(search(RangeOp::Gt).await, ["late", "open"]);
    assert_eq!(search(RangeOp::Lt).await, ["early"]);
    assert_eq!(search(RangeOp::Ge).await, ["late", "middle", "open"]);
    assert_eq!(search(RangeOp::Le).await, ["early", "middle"]);
    assert_eq!(search(RangeOp::Sa).await, ["late"]);
    assert_eq!(search(RangeOp::Eb).await, ["early"]);
    assert_eq!(search(RangeOp::Overlaps).await, ["middle", "open"]);
}

async fn chains_reverse_chains_and_compartments(backend: Backend) {
    let store = backend.store;
    put(&store, "Patient", "p1", vec![string("name", "Peter")]).await;
    put(&store, "Patient", "p2", vec![string("name", "Paula")]).await;
    put(&store, "Group", "g1", vec![string("name", "Peter")]).await;
    put(
        &store,
        "Observation",
        "o1",
        vec![
            reference("subject", "Patient", "p1"),
            token("code", "http://loinc.org", "1234"),
        ],
    )
    .await;
    put(
        &store,
        "Observation",
        "o2",
        vec![
            reference("subject", "Patient", "p2"),
            token("code", "http://loinc.org", "9999"),
        ],
    )
    .await;
    put(
        &store,
        "Observation",
        "o3",
        vec![
            reference("subject", "Group", "g1"),
            token("code", "http://loinc.org", "1234"),
        ],
    )
    .await;
    let chain = Filter::Chain {
        param: "subject".into(),
        target_type: "Patient".into(),
        inner: vec![matching(
            "name",
            vec![Test::StringStartsWith("pete".into())],
        )],
    };
    assert_eq!(ids(&store, "Observation", vec![chain]).await, ["o1"]);
    let has = Filter::Has {
        source_type: "Observation".into(),
        param: "subject".into(),
        inner: vec![matching(
            "code",
            vec![Test::Token {
                system: Some("http://loinc.org".into()),
                code: Some("1234".into()),
            }],
        )],
    };
    assert_eq!(ids(&store, "Patient", vec![has]).await, ["p1"]);
    let by_reference = |target_type: Option<&str>| {
        vec![matching(
            "subject",
            vec![Test::Reference {
                target_type: target_type.map(str::to_owned),
                target_id: "p1".into(),
            }],
        )]
    };
    assert_eq!(
        ids(&store, "Observation", by_reference(Some("Patient"))).await,
        ["o1"]
    );
    assert!(
        ids(&store, "Observation", by_reference(Some("Group")))
            .await
            .is_empty()
    );
    assert_eq!(ids(&store, "Observation", by_reference(None)).await, ["o1"]);
    let compartment = Filter::Compartment {
        params: vec!["subject".into(), "performer".into()],
        target_type: "Patient".into(),
        target_ids: vec!["p2".into()],
    };
    assert_eq!(ids(&store, "Observation", vec![compartment]).await, ["o2"]);
    let either = Filter::Compartment {
        params: vec!["subject".into(), "performer".into()],
        target_type: "Patient".into(),
        target_ids: vec!["p1".into(), "p2".into()],
    };
    assert_eq!(ids(&store, "Observation", vec![either]).await, ["o1", "o2"]);
    let no_one = Filter::Compartment {
        params: vec!["subject".into()],
        target_type: "Patient".into(),
        target_ids: vec![],
    };
    assert!(ids(&store, "Observation", vec![no_one]).await.is_empty());
    // Whose compartment a resource is in, through the given parameters only.
    let owners = store
        .run(|tx| {
            let params = ["performer".to_owned(), "subject".to_owned()];
            Ok((
                tx.referenced_through("Observation", "o2", &params, "Patient")?,
                tx.referenced_through("Observation", "o3", &params, "Patient")?,
                tx.referenced_through("Observation", "o2", &params[..1], "Patient")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(owners, (vec!["p2".to_owned()], vec![], vec![]));
    let members = vec![("Observation".to_owned(), vec!["subject".to_owned()])];
    let everything = store
        .run(move |tx| tx.compartment("Patient", "p1", &members, None, 100))
        .await
        .unwrap();
    assert_eq!(everything, [("Observation".to_owned(), "o1".to_owned())]);
}

async fn composites_match_within_one_group(backend: Backend) {
    let store = backend.store;
    let component = |group, code: &str, value: f64| {
        vec![
            IndexRow {
                param: "component-code-value-quantity#0".into(),
                group,
                cell: IndexCell::Token {
                    system: "http://loinc.org".into(),
                    code: code.into(),
                },
            },
            IndexRow {
                param: "component-code-value-quantity#1".into(),
                group,
                cell: IndexCell::Quantity {
                    system: String::new(),
                    code: "mm[Hg]".into(),
                    value,
                    low: value - 0.5,
                    high: value + 0.5,
                },
            },
        ]
    };
    // Systolic 120 and diastolic 80 in one resource: "diastolic > 100" must not match
    // by pairing the diastolic code with the systolic value.
    let mut rows = component(1, "8480-6", 120.0);
    rows.extend(component(2, "8462-4", 80.0));
    put(&store, "Observation", "bp", rows).await;
    let search = |code: &str, low: f64| {
        vec![Filter::Composite {
            param: "component-code-value-quantity".into(),
            alternatives: vec![vec![
                Test::Token {
                    system: None,
                    code: Some(code.into()),
                },
                Test::Quantity {
                    op: RangeOp::Gt,
                    low,
                    high: low,
                    system: None,
                    code: None,
                },
            ]],
        }]
    };
    assert_eq!(
        ids(&store, "Observation", search("8480-6", 100.0)).await,
        ["bp"]
    );
    assert!(
        ids(&store, "Observation", search("8462-4", 100.0))
            .await
            .is_empty()
    );
}

async fn keyset_pages_neither_skip_nor_repeat(backend: Backend) {
    let store = backend.store;
    for i in 0..25 {
        let mut index = vec![string("family", &format!("name{:02}", i % 7))];
        if i % 5 != 0 {
            index.push(date("birthdate", i % 4, i % 4));
        }
        put(&store, "Patient", &format!("p{i:02}"), index).await;
    }
    for sort in [
        vec![SortBy::Param {
            param: "family".into(),
            table: IndexTable::String,
            descending: false,
        }],
        vec![
            SortBy::Param {
                param: "birthdate".into(),
                table: IndexTable::Date,
                descending: true,
            },
            SortBy::Param {
                param: "family".into(),
                table: IndexTable::String,
                descending: false,
            },
        ],
        vec![SortBy::Id { descending: true }],
    ] {
        let mut seen = Vec::new();
        let mut position = None;
        let mut pages = Vec::new();
        loop {
            let spec = SearchSpec {
                resource_type: "Patient".into(),
                filters: vec![],
                sort: sort.clone(),
                position: position.clone(),
                limit: 4,
            };
            let page = store.run(move |tx| tx.search(&spec)).await.unwrap();
            let Some(last) = page.last() else { break };
            position = Some(PagePosition {
                values: last.sort_values.clone(),
                backwards: false,
            });
            pages.push(page.clone());
            seen.extend(page.into_iter().map(|hit| hit.id));
        }
        let all = ids_sorted(&store, sort.clone()).await;
        assert_eq!(seen, all, "paging by {sort:?} gives the one-shot order");
        assert_eq!(seen.len(), 25);
        // A previous page, from the first row of the third page, is the second page.
        let spec = SearchSpec {
            resource_type: "Patient".into(),
            filters: vec![],
            sort: sort.clone(),
            position: Some(PagePosition {
                values: pages[2][0].sort_values.clone(),
                backwards: true,
            }),
            limit: 4,
        };
        let mut previous: Vec<String> = store
            .run(move |tx| tx.search(&spec))
            .await
            .unwrap()
            .into_iter()
            .map(|hit| hit.id)
            .collect();
        previous.reverse();
        let second: Vec<String> = pages[1].iter().map(|hit| hit.id.clone()).collect();
        assert_eq!(previous, second);
    }
    // Patients without a birth date come last, whatever the direction.
    let sorted = ids_sorted(
        &store,
        vec![SortBy::Param {
            param: "birthdate".into(),
            table: IndexTable::Date,
            descending: false,
        }],
    )
    .await;
    assert_eq!(&sorted[20..], ["p00", "p05", "p10", "p15", "p20"]);
}

async fn ids_sorted(store: &hygie_store::SharedStore, sort: Vec<SortBy>) -> Vec<String> {
    let spec = SearchSpec {
        resource_type: "Patient".into(),
        filters: vec![],
        sort,
        position: None,
        limit: 1000,
    };
    store
        .run(move |tx| tx.search(&spec))
        .await
        .unwrap()
        .into_iter()
        .map(|hit| hit.id)
        .collect()
}

async fn includes_follow_references_both_ways(backend: Backend) {
    let store = backend.store;
    put(&store, "Patient", "p1", vec![]).await;
    put(&store, "Practitioner", "dr", vec![]).await;
    put(
        &store,
        "Observation",
        "o1",
        vec![
            reference("subject", "Patient", "p1"),
            reference("performer", "Practitioner", "dr"),
        ],
    )
    .await;
    put(
        &store,
        "Observation",
        "o2",
        vec![reference("subject", "Patient", "p1")],
    )
    .await;
    let ids = vec!["o1".to_owned(), "o2".to_owned()];
    let targets = store
        .run(move |tx| tx.references_from("Observation", &ids, Some("subject"), 100))
        .await
        .unwrap();
    assert_eq!(targets, [("Patient".to_owned(), "p1".to_owned())]);
    let ids = vec!["o1".to_owned()];
    let all = store
        .run(move |tx| tx.references_from("Observation", &ids, None, 100))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let sources = store
        .run(|tx| {
            tx.references_to(
                "Observation",
                Some("subject"),
                "Patient",
                &["p1".into()],
                100,
            )
        })
        .await
        .unwrap();
    assert_eq!(sources, ["o1", "o2"]);
    let bounded = store
        .run(|tx| tx.references_to("Observation", None, "Patient", &["p1".into()], 1))
        .await
        .unwrap();
    assert_eq!(bounded.len(), 1, "the limit bounds the fan-out");
    let records = store
        .run(|tx| tx.current_many("Observation", &["o2".into(), "missing".into()]))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, "o2");
}

async fn deleted_and_replaced_rows_are_not_found(backend: Backend) {
    let store = backend.store;
    put(&store, "Patient", "x", vec![string("family", "Old")]).await;
    put(&store, "Patient", "x", vec![string("family", "New")]).await;
    let family = |prefix: &str| {
        vec![matching(
            "family",
            vec![Test::StringStartsWith(prefix.into())],
        )]
    };
    assert!(ids(&store, "Patient", family("old")).await.is_empty());
    assert_eq!(ids(&store, "Patient", family("new")).await, ["x"]);
    delete(&store, "Patient", "x", 3).await;
    assert!(ids(&store, "Patient", family("new")).await.is_empty());
    assert!(ids(&store, "Patient", vec![]).await.is_empty());
    // A re-index replaces rows in place.
    put(&store, "Patient", "y", vec![string("family", "Before")]).await;
    store
        .run(|tx| tx.replace_index("Patient", "y", &[string("family", "After")]))
        .await
        .unwrap();
    assert_eq!(ids(&store, "Patient", family("after")).await, ["y"]);
    assert!(ids(&store, "Patient", family("before")).await.is_empty());
    let scanned = store.run(|tx| tx.scan_current(None, 10)).await.unwrap();
    assert_eq!(scanned.len(), 1, "deleted resources are not scanned");
    assert_eq!(scanned[0].id, "y");
}

async fn hub_settings_are_kept(backend: Backend) {
    let store = backend.store;
    assert_eq!(store.run(|tx| tx.meta_get("k")).await.unwrap(), None);
    store.run(|tx| tx.meta_set("k", "1")).await.unwrap();
    store.run(|tx| tx.meta_set("k", "2")).await.unwrap();
    assert_eq!(
        store.run(|tx| tx.meta_get("k")).await.unwrap().as_deref(),
        Some("2")
    );
}

async fn nul_characters_are_indexed_and_found(backend: Backend) {
    // A FHIR string may hold U+0000; PostgreSQL text may not. Both backends must index it
    // and find it by the same value.
    let store = backend.store;
    put(
        &store,
        "Patient",
        "n",
        vec![string("family", "a\0b"), token("identifier", "", "x\0")],
    )
    .await;
    let found = ids(
        &store,
        "Patient",
        vec![matching(
            "family",
            vec![Test::StringStartsWith("a\0".into())],
        )],
    )
    .await;
    assert_eq!(found, ["n"]);
    let found = ids(
        &store,
        "Patient",
        vec![matching(
            "identifier",
            vec![Test::Token {
                system: None,
                code: Some("x\0".into()),
            }],
        )],
    )
    .await;
    assert_eq!(found, ["n"]);
}

/// A date search on an encrypted birth date becomes hundreds of bucket codes: the store
/// must take thousands of alternatives (an `IN` list; as `OR`s SQLite refuses past an
/// expression depth of 1,000), with the same answer as one code, driving or probed.
async fn thousands_of_alternative_codes_are_one_list(backend: Backend) {
    let store = backend.store;
    put(
        &store,
        "Patient",
        "hit",
        vec![token("birthdate", "", "c-1777"), token("gender", "", "f")],
    )
    .await;
    put(
        &store,
        "Patient",
        "miss",
        vec![token("birthdate", "", "other"), token("gender", "", "f")],
    )
    .await;
    let codes = |system: Option<&str>| -> Vec<Test> {
        (0..2_500)
            .map(|n| Test::Token {
                system: system.map(str::to_owned),
                code: Some(format!("c-{n}")),
            })
            .collect()
    };
    let many = Filter::Match {
        param: "birthdate".into(),
        tests: codes(None),
        negate: false,
    };
    assert_eq!(ids(&store, "Patient", vec![many.clone()]).await, ["hit"]);
    // Probed (another filter drives the query) and negated.
    let gender = Filter::Match {
        param: "gender".into(),
        tests: vec![Test::Token {
            system: None,
            code: Some("f".into()),
        }],
        negate: false,
    };
    assert_eq!(
        ids(&store, "Patient", vec![gender.clone(), many]).await,
        ["hit"]
    );
    let negated = Filter::Match {
        param: "birthdate".into(),
        tests: codes(None),
        negate: true,
    };
    assert_eq!(
        ids(&store, "Patient", vec![gender, negated]).await,
        ["miss"]
    );
    // With a system, each code stays its own test, and still matches.
    let mut with_system = codes(Some(""));
    with_system.truncate(300);
    with_system.push(Test::Token {
        system: Some(String::new()),
        code: Some("c-1777".into()),
    });
    let filter = Filter::Match {
        param: "birthdate".into(),
        tests: with_system,
        negate: false,
    };
    assert_eq!(ids(&store, "Patient", vec![filter]).await, ["hit"]);
}

fn term(byte: u8) -> hygie_store::BlindTerm {
    // Bytes that, written as the index writes them, would be quotes and spaces if they
    // were ASCII: the encoding must keep a term one word.
    [
        byte, b'"', b' ', b'*', 0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, byte,
    ]
}

/// Writes version `version` of `Patient/{id}` with `index`, inside a unit of work.
fn put_patient(
    tx: &mut dyn hygie_store::Tx,
    id: &str,
    version: i64,
    index: &[IndexRow],
) -> Result<(), StoreError> {
    tx.put_version(&NewVersion {
        resource_type: "Patient",
        id,
        version,
        last_updated_us: version,
        deleted: false,
        body: b"{}",
        index,
        key_id: None,
    })
}

fn terms(bytes: &[u8]) -> Vec<IndexRow> {
    bytes
        .iter()
        .map(|&byte| row("family", IndexCell::Term(term(byte))))
        .collect()
}

/// Within a unit of work, a search sees the term writes before it that could change its
/// answer: a new entry holding a searched term, and a replaced version's entry, which must
/// no longer answer for its resource (on SQLite, term writes are queued until a search
/// reads the term index: this fails if such a search skipped a removal or an entry it
/// looks for).
async fn queued_terms_are_written_before_a_search_they_could_change(backend: Backend) {
    let store = backend.store;
    let found = store
        .run(|tx| {
            let put = |tx: &mut dyn hygie_store::Tx, id: &str, version, bytes: &[u8]| {
                put_patient(tx, id, version, &terms(bytes))
            };
            let search =
                |tx: &mut dyn hygie_store::Tx, byte: u8| -> Result<Vec<String>, StoreError> {
                    let spec = SearchSpec {
                        resource_type: "Patient".into(),
                        filters: vec![matching("family", vec![Test::Term(term(byte))])],
                        sort: vec![],
                        position: None,
                        limit: 10,
                    };
                    Ok(tx.search(&spec)?.into_iter().map(|hit| hit.id).collect())
                };
            let mut found = Vec::new();
            put(tx, "a", 1, &[41, 42])?;
            found.push(search(tx, 41)?); // a's queued entry holds 41
            put(tx, "a", 2, &[41])?;
            found.push(search(tx, 42)?); // only a's replaced version held 42
            found.push(search(tx, 41)?);
            put(tx, "b", 1, &[43])?;
            found.push(search(tx, 44)?); // nothing queued holds 44
            found.push(search(tx, 43)?);
            Ok(found)
        })
        .await
        .unwrap();
    let expected: Vec<Vec<String>> = vec![
        vec!["a".into()],
        vec![],
        vec!["a".into()],
        vec![],
        vec!["b".into()],
    ];
    assert_eq!(found, expected);
}

/// The inverted index of blind terms: a term finds the resources that have it, alone
/// (driving), beside another filter (probing), negated, in a chain; an update replaces a
/// resource's terms, a deletion removes them, a re-index replaces them in place.
async fn blind_terms_are_found_by_equality_and_follow_their_resource(backend: Backend) {
    let store = backend.store;
    let mut a = terms(&[1, 2, 3]);
    a.push(token("gender", "", "female"));
    put(&store, "Patient", "a", a).await;
    let mut b = terms(&[2, 4]);
    b.push(token("gender", "", "male"));
    put(&store, "Patient", "b", b).await;
    put(&store, "Practitioner", "c", terms(&[2])).await;
    put(
        &store,
        "Observation",
        "o",
        vec![reference("subject", "Patient", "a")],
    )
    .await;
    let has = |bytes: &[u8]| {
        matching(
            "family",
            bytes.iter().map(|&b| Test::Term(term(b))).collect(),
        )
    };
    let not = |bytes: &[u8]| Filter::Match {
        param: "family".into(),
        tests: bytes.iter().map(|&b| Test::Term(term(b))).collect(),
        negate: true,
    };
    let mut found = ids(&store, "Patient", vec![has(&[2])]).await;
    found.sort();
    assert_eq!(found, ["a", "b"], "the type is part of the match");
    assert_eq!(ids(&store, "Patient", vec![has(&[1])]).await, ["a"]);
    assert_eq!(
        ids(&store, "Patient", vec![has(&[9, 4])]).await,
        ["b"],
        "any of several"
    );
    assert!(ids(&store, "Patient", vec![has(&[9])]).await.is_empty());
    assert_eq!(ids(&store, "Patient", vec![not(&[1])]).await, ["b"]);
    // Probing: another filter drives the query.
    let female = code_is("gender", "female");
    assert_eq!(
        ids(&store, "Patient", vec![female.clone(), has(&[2])]).await,
        ["a"]
    );
    assert!(
        ids(&store, "Patient", vec![female, has(&[4])])
            .await
            .is_empty()
    );
    let chain = |bytes: &[u8]| Filter::Chain {
        param: "subject".into(),
        target_type: "Patient".into(),
        inner: vec![has(bytes)],
    };
    assert_eq!(ids(&store, "Observation", vec![chain(&[3])]).await, ["o"]);
    assert!(
        ids(&store, "Observation", vec![chain(&[4])])
            .await
            .is_empty()
    );
    // An update replaces the terms.
    put(&store, "Patient", "a", terms(&[7])).await;
    assert!(ids(&store, "Patient", vec![has(&[1])]).await.is_empty());
    assert_eq!(ids(&store, "Patient", vec![has(&[7])]).await, ["a"]);
    // A re-index too, in place.
    store
        .run(|tx| tx.replace_index("Patient", "a", &terms(&[8])))
        .await
        .unwrap();
    assert!(ids(&store, "Patient", vec![has(&[7])]).await.is_empty());
    assert_eq!(ids(&store, "Patient", vec![has(&[8])]).await, ["a"]);
    // A deletion removes them.
    delete(&store, "Patient", "a", 3).await;
    assert!(ids(&store, "Patient", vec![has(&[8])]).await.is_empty());
    assert_eq!(ids(&store, "Practitioner", vec![has(&[2])]).await, ["c"]);
}

/// Many units at once (SQLite groups them in batches and writes their terms to the index
/// together, before the commit): a unit finds the terms it wrote; a unit whose search
/// needs the batch's terms written, and which then fails, takes only its own terms with
/// it, not those of the units before it; a version replaced or a savepoint rolled back
/// inside a unit leaves no term behind.
async fn blind_terms_share_the_fate_of_their_unit_in_a_batch(backend: Backend) {
    let store = backend.store;
    const SHARED: u8 = 250;
    const REPLACED: u8 = 251;
    const UNDONE: u8 = 252;
    let has = |byte: u8| matching("family", vec![Test::Term(term(byte))]);
    let spec = move |byte: u8| SearchSpec {
        resource_type: "Patient".into(),
        filters: vec![has(byte)],
        sort: vec![],
        position: None,
        limit: 1000,
    };
    let mut units = Vec::new();
    for i in 1..=120u8 {
        let store = store.clone();
        units.push(tokio::spawn(async move {
            let outcome = store
                .run(move |tx| {
                    let id = format!("p{i}");
                    let put = put_patient;
                    if i % 4 == 2 {
                        put(tx, &id, 1, &terms(&[i, SHARED, REPLACED]))?;
                        put(tx, &id, 2, &terms(&[i, SHARED]))?;
                    } else {
                        put(tx, &id, 1, &terms(&[i, SHARED]))?;
                    }
                    if i % 5 == 1 {
                        tx.savepoint()?;
                        put(tx, &format!("q{i}"), 1, &terms(&[i, UNDONE]))?;
                        tx.rollback_to_savepoint()?;
                    }
                    // Some units read their own terms (and so write the batch's so far);
                    // the others leave theirs queued for a later unit to write.
                    if i % 7 == 1 {
                        let own: Vec<String> =
                            tx.search(&spec(i))?.into_iter().map(|h| h.id).collect();
                        if own != [id.clone()] {
                            return Err(StoreError::Database(format!("unit {i} found {own:?}")));
                        }
                    }
                    if i % 3 == 0 {
                        // Needs every term of the batch so far, then gives up.
                        tx.search(&spec(SHARED))?;
                        return Err(StoreError::Database("the unit gives up".into()));
                    }
                    Ok(())
                })
                .await;
            (i, outcome)
        }));
    }
    let mut kept = Vec::new();
    for unit in units {
        let (i, outcome) = unit.await.unwrap();
        match outcome {
            Ok(()) => kept.push(format!("p{i}")),
            Err(StoreError::Database(message)) if i % 3 == 0 && message == "the unit gives up" => {}
            Err(error) => panic!("unit {i}: {error:?}"),
        }
    }
    assert_eq!(kept.len(), 80);
    let mut shared = ids(&store, "Patient", vec![has(SHARED)]).await;
    shared.sort();
    kept.sort();
    assert_eq!(shared, kept, "exactly the kept units' terms");
    for i in 1..=120u8 {
        let expected: Vec<String> = if i % 3 == 0 {
            vec![]
        } else {
            vec![format!("p{i}")]
        };
        assert_eq!(
            ids(&store, "Patient", vec![has(i)]).await,
            expected,
            "unit {i}"
        );
    }
    assert!(ids(&store, "Patient", vec![has(REPLACED)]).await.is_empty());
    assert!(ids(&store, "Patient", vec![has(UNDONE)]).await.is_empty());
}

/// The stored rows of `Patient/id` in `table` (SQLite only): rowid and text of its values.
fn sqlite_rows(backend: &Backend, table: &str, id: &str) -> Option<Vec<(i64, String)>> {
    let hygie_store::backup::Target::Sqlite(dir) = backend.target() else {
        return None;
    };
    let connection = rusqlite::Connection::open(dir.join("hygie.db")).unwrap();
    let mut statement = connection
        .prepare(&format!(
            "SELECT rowid, param || '|' || grp || '|' || quote({}) FROM {table}
             WHERE resource_type = 'Patient' AND id = ?1 ORDER BY rowid",
            if table == "search_token" {
                "code"
            } else {
                "value"
            }
        ))
        .unwrap();
    let rows = statement
        .query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    Some(rows)
}

/// An update keeps the index rows it shares with the version before (on SQLite, the very
/// same rows: a discharge rewrites an Encounter's status and period, not its subject or
/// participants), removes the ones it no longer has, adds the new ones, and a row listed
/// twice is stored twice.
async fn an_update_rewrites_only_the_rows_that_changed(backend: Backend) {
    let store = backend.store.clone();
    let number = |param: &str, value: f64| {
        row(
            param,
            IndexCell::Number {
                value,
                low: value - 0.05,
                high: value + 0.05,
            },
        )
    };
    let long = "x".repeat(400);
    put(
        &store,
        "Patient",
        "d",
        vec![
            token("gender", "", "female"),
            token("identifier", "urn:a", "1"),
            token("identifier", "urn:a", "1"),
            token("identifier", "urn:a", "2"),
            string("family", "Alpha"),
            string("given", &long),
            date("birthdate", 10, 20),
            number("weight", 0.1 + 0.2),
            reference("general-practitioner", "Practitioner", "p1"),
        ],
    )
    .await;
    // Written after, so that rows deleted and written again would get new rowids.
    put(
        &store,
        "Patient",
        "later",
        vec![token("gender", "", "male")],
    )
    .await;
    let tokens_before = sqlite_rows(&backend, "search_token", "d");
    let numbers_before = sqlite_rows(&backend, "search_number", "d");
    put(
        &store,
        "Patient",
        "d",
        vec![
            token("identifier", "urn:a", "1"),
            token("gender", "", "female"),
            token("identifier", "urn:a", "3"),
            token("identifier", "urn:a", "3"),
            string("family", "Beta"),
            string("given", &long),
            date("birthdate", 10, 20),
            number("weight", 0.1 + 0.2),
            reference("general-practitioner", "Practitioner", "p2"),
        ],
    )
    .await;
    let identifier = |code: &str| {
        matching(
            "identifier",
            vec![Test::Token {
                system: Some("urn:a".into()),
                code: Some(code.into()),
            }],
        )
    };
    assert_eq!(ids(&store, "Patient", vec![identifier("1")]).await, ["d"]);
    assert!(
        ids(&store, "Patient", vec![identifier("2")])
            .await
            .is_empty()
    );
    assert_eq!(ids(&store, "Patient", vec![identifier("3")]).await, ["d"]);
    assert_eq!(
        ids(&store, "Patient", vec![code_is("gender", "female")]).await,
        ["d"]
    );
    let family = |text: &str| matching("family", vec![Test::StringExact(text.into())]);
    assert!(
        ids(&store, "Patient", vec![family("Alpha")])
            .await
            .is_empty()
    );
    assert_eq!(ids(&store, "Patient", vec![family("Beta")]).await, ["d"]);
    let given = matching("given", vec![Test::StringStartsWith("xxxx".into())]);
    assert_eq!(ids(&store, "Patient", vec![given]).await, ["d"]);
    let gp = |id: &str| {
        matching(
            "general-practitioner",
            vec![Test::Reference {
                target_type: Some("Practitioner".into()),
                target_id: id.into(),
            }],
        )
    };
    assert!(ids(&store, "Patient", vec![gp("p1")]).await.is_empty());
    assert_eq!(ids(&store, "Patient", vec![gp("p2")]).await, ["d"]);
    let weight = matching(
        "weight",
        vec![Test::Number {
            op: RangeOp::Gt,
            low: 0.1,
            high: 0.1,
        }],
    );
    assert_eq!(ids(&store, "Patient", vec![weight]).await, ["d"]);
    // On SQLite, the rows: the kept ones untouched, one of the two "1" gone, "2" gone,
    // "3" twice.
    if let (Some(before), Some(after)) = (tokens_before, sqlite_rows(&backend, "search_token", "d"))
    {
        let kept_rowid = |text: &str| before.iter().find(|(_, t)| t == text).map(|(r, _)| *r);
        for text in ["gender|0|'female'", "identifier|0|'1'"] {
            let rowid = kept_rowid(text).unwrap();
            assert!(
                after.contains(&(rowid, text.to_owned())),
                "{text} was rewritten: {before:?} -> {after:?}"
            );
        }
        let mut texts: Vec<&str> = after.iter().map(|(_, t)| t.as_str()).collect();
        texts.sort();
        assert_eq!(
            texts,
            [
                "gender|0|'female'",
                "identifier|0|'1'",
                "identifier|0|'3'",
                "identifier|0|'3'"
            ]
        );
        assert_eq!(
            sqlite_rows(&backend, "search_number", "d").unwrap(),
            numbers_before.unwrap(),
            "a float read back equals the one written"
        );
    }
}

/// A reference to another server (or a URN) is found by the URL it was written with, and only
/// by it: another server's `Patient/p1` is not ours, for a search by type and id, by bare id,
/// or for the compartment. Such a row holds no target type, and its spelling as target id.
async fn references_elsewhere_are_found_by_their_spelling(backend: Backend) {
    let store = backend.store;
    let elsewhere = |url: &str| {
        row(
            "subject",
            IndexCell::Reference {
                target_type: String::new(),
                target_id: url.into(),
                url: url.into(),
            },
        )
    };
    put(
        &store,
        "Observation",
        "local",
        vec![reference("subject", "Patient", "p1")],
    )
    .await;
    put(
        &store,
        "Observation",
        "other-server",
        vec![elsewhere("http://other.example/fhir/Patient/p1")],
    )
    .await;
    put(
        &store,
        "Observation",
        "third-server",
        vec![elsewhere("https://third.example/Patient/p1")],
    )
    .await;
    put(
        &store,
        "Observation",
        "no-id",
        vec![elsewhere("urn:uuid:3b2c1a00-0000-4000-8000-000000000001")],
    )
    .await;
    // A row with no target type but a bare id as key (not what the hub writes): still not a
    // reference to our p1, whichever way it is searched.
    put(
        &store,
        "Observation",
        "untyped",
        vec![row(
            "subject",
            IndexCell::Reference {
                target_type: String::new(),
                target_id: "p1".into(),
                url: "p1".into(),
            },
        )],
    )
    .await;
    let by_url = |url: &str| vec![matching("subject", vec![Test::ReferenceUrl(url.into())])];
    assert_eq!(
        ids(
            &store,
            "Observation",
            by_url("http://other.example/fhir/Patient/p1")
        )
        .await,
        ["other-server"]
    );
    assert_eq!(
        ids(
            &store,
            "Observation",
            by_url("urn:uuid:3b2c1a00-0000-4000-8000-000000000001")
        )
        .await,
        ["no-id"]
    );
    assert!(
        ids(
            &store,
            "Observation",
            by_url("http://nowhere.example/Patient/p1")
        )
        .await
        .is_empty()
    );
    for target_type in [Some("Patient".to_owned()), None] {
        let local = vec![matching(
            "subject",
            vec![Test::Reference {
                target_type: target_type.clone(),
                target_id: "p1".into(),
            }],
        )];
        assert_eq!(
            ids(&store, "Observation", local).await,
            ["local"],
            "{target_type:?}"
        );
    }
    let compartment = Filter::Compartment {
        params: vec!["subject".into()],
        target_type: "Patient".into(),
        target_ids: vec!["p1".into()],
    };
    assert_eq!(
        ids(&store, "Observation", vec![compartment]).await,
        ["local"]
    );
}

/// A filter that most resources match (a common category, a city's blind term) pages in
/// `_id` order by walking the resources, and one that few match (or a walk that finds too
/// few within its budget) by the driven query: the answers must be the same either way,
/// page after page, whatever the store chose. 5,000 resources: past the walk's budget (on
/// SQLite its steps, on PostgreSQL its window of rows), so that a dense filter combined with a rare
/// one falls back to the driven query.
async fn dense_filters_page_in_id_order_exactly_as_the_driven_query(backend: Backend) {
    const COUNT: usize = 5_000;
    let store = backend.store;
    let category = |i: usize| {
        if i.is_multiple_of(100) {
            "lab"
        } else {
            "vital"
        }
    };
    let status = |i: usize| {
        if i.is_multiple_of(3) {
            "amended"
        } else {
            "final"
        }
    };
    let rare = |i: usize| i == 7 || i == COUNT - 7;
    let city = |i: usize| if i.is_multiple_of(2) { 1 } else { 2 };
    store
        .run(move |tx| {
            for i in 0..COUNT {
                let mut index = vec![
                    token("category", "", category(i)),
                    token("status", "", status(i)),
                    row("address-city", IndexCell::Term(term(city(i)))),
                ];
                if rare(i) {
                    index.push(token("code", "", "rare"));
                }
                tx.put_version(&NewVersion {
                    resource_type: "Observation",
                    id: &format!("o{i:05}"),
                    version: 1,
                    last_updated_us: 1,
                    deleted: false,
                    body: b"{}",
                    index: &index,
                    key_id: None,
                })?;
            }
            // As an import does: PostgreSQL plans from statistics (SQLite does nothing).
            tx.refresh_statistics()
        })
        .await
        .unwrap();
    let city_is = |byte: u8| matching("address-city", vec![Test::Term(term(byte))]);
    let not_final = Filter::Match {
        param: "status".into(),
        tests: vec![Test::Token {
            system: None,
            code: Some("final".into()),
        }],
        negate: true,
    };
    let no_code = Filter::Missing {
        param: "code".into(),
        table: IndexTable::Token,
        missing: true,
    };
    type Rule = Box<dyn Fn(usize) -> bool>;
    let cases: Vec<(&str, Vec<Filter>, Rule)> = vec![
        (
            "dense",
            vec![code_is("category", "vital")],
            Box::new(move |i| category(i) == "vital"),
        ),
        (
            "sparse",
            vec![code_is("category", "lab")],
            Box::new(move |i| category(i) == "lab"),
        ),
        (
            "two dense",
            vec![code_is("category", "vital"), code_is("status", "final")],
            Box::new(move |i| category(i) == "vital" && status(i) == "final"),
        ),
        (
            "dense and rare",
            vec![code_is("category", "vital"), code_is("code", "rare")],
            Box::new(move |i| category(i) == "vital" && rare(i)),
        ),
        (
            "dense, negated, missing",
            vec![code_is("category", "vital"), not_final, no_code],
            Box::new(move |i| category(i) == "vital" && status(i) != "final" && !rare(i)),
        ),
        (
            "dense blind term",
            vec![city_is(2), code_is("status", "final")],
            Box::new(move |i| city(i) == 2 && status(i) == "final"),
        ),
    ];
    for (name, filters, rule) in cases {
        for descending in [false, true] {
            let mut expected: Vec<String> = (0..COUNT)
                .filter(|&i| rule(i))
                .map(|i| format!("o{i:05}"))
                .collect();
            if descending {
                expected.reverse();
            }
            let page_size = 11;
            // The first three pages, then the last ones from a cursor near the end.
            let mut seen = Vec::new();
            let mut position = None;
            for _ in 0..3 {
                let page =
                    observation_page(&store, &filters, descending, position, page_size).await;
                let Some(last) = page.last() else { break };
                position = Some(PagePosition {
                    values: last.sort_values.clone(),
                    backwards: false,
                });
                seen.extend(page.into_iter().map(|hit| hit.id));
            }
            let head = expected.len().min(3 * page_size);
            assert_eq!(
                seen,
                expected[..head],
                "{name}, descending {descending}: first pages"
            );
            if expected.len() > 2 {
                let from = expected.len() - 2;
                let cursor = Some(PagePosition {
                    values: vec![hygie_store::SortValue::Text(expected[from - 1].clone())],
                    backwards: false,
                });
                let tail = observation_page(&store, &filters, descending, cursor, page_size).await;
                let tail: Vec<String> = tail.into_iter().map(|hit| hit.id).collect();
                assert_eq!(
                    tail,
                    expected[from..],
                    "{name}, descending {descending}: last page"
                );
            }
        }
    }
}

async fn observation_page(
    store: &hygie_store::SharedStore,
    filters: &[Filter],
    descending: bool,
    position: Option<PagePosition>,
    limit: usize,
) -> Vec<hygie_store::SearchHit> {
    let spec = SearchSpec {
        resource_type: "Observation".into(),
        filters: filters.to_vec(),
        sort: if descending {
            vec![SortBy::Id { descending: true }]
        } else {
            vec![]
        },
        position,
        limit,
    };
    store.run(move |tx| tx.search(&spec)).await.unwrap()
}

/// Sets `Observation/id`'s kept patients (`resources.patient_refs`) by hand, as a damaged or
/// hand-edited database would hold them.
fn set_kept_patients(backend: &Backend, id: &str, value: Option<&str>) {
    // `$n` parameters: SQLite reads them as well as PostgreSQL.
    const SQL: &str =
        "UPDATE resources SET patient_refs = $1 WHERE resource_type = 'Observation' AND id = $2";
    match backend.target() {
        hygie_store::backup::Target::Sqlite(dir) => {
            let connection = rusqlite::Connection::open(dir.join("hygie.db")).unwrap();
            let changed = connection
                .execute(SQL, rusqlite::params![value, id])
                .unwrap();
            assert_eq!(changed, 1);
        }
        hygie_store::backup::Target::Postgres(url) => {
            let (value, id) = (value.map(str::to_owned), id.to_owned());
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                assert_eq!(client.execute(SQL, &[&value, &id]).unwrap(), 1);
            })
            .join()
            .unwrap();
        }
    }
}

/// Whose compartment a resource is in is kept with its head, and that answer follows
/// every write of the resource's index: a create, an update that moves it to another
/// patient, a re-index, a deletion. A need-to-know check and the audit trail both rely on
/// it, so a stale answer would let a clinician read a resource of a patient out of care.
async fn a_resources_patients_follow_every_write_of_its_index(backend: Backend) {
    let store = backend.store.clone();
    let through = |params: &'static [&'static str]| {
        let store = store.clone();
        async move {
            store
                .run(move |tx| {
                    let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
                    tx.referenced_through("Observation", "o1", &params, "Patient")
                })
                .await
                .unwrap()
        }
    };
    const BOTH: &[&str] = &["subject", "performer"];
    assert!(through(BOTH).await.is_empty(), "no resource, no patient");
    put(
        &store,
        "Observation",
        "o1",
        vec![
            reference("subject", "Patient", "p1"),
            reference("performer", "Practitioner", "d1"),
            reference("performer", "Patient", "p3"),
        ],
    )
    .await;
    assert_eq!(through(BOTH).await, ["p1", "p3"]);
    assert_eq!(through(&["subject"]).await, ["p1"]);
    assert!(through(&["encounter"]).await.is_empty());

    put(
        &store,
        "Observation",
        "o1",
        vec![reference("subject", "Patient", "p2")],
    )
    .await;
    assert_eq!(through(BOTH).await, ["p2"], "an update moves the resource");

    store
        .run(|tx| {
            tx.replace_index(
                "Observation",
                "o1",
                &[
                    reference("subject", "Patient", "p4"),
                    reference("performer", "Patient", "p4"),
                ],
            )
        })
        .await
        .unwrap();
    assert_eq!(through(BOTH).await, ["p4"], "a re-index moves it too");

    // The kept answer is the one given: a hand-made one shows through...
    set_kept_patients(&backend, "o1", Some("subject\tp9"));
    assert_eq!(through(BOTH).await, ["p9"]);
    // ...and where none is kept, or one that is not well formed, the index answers.
    set_kept_patients(&backend, "o1", None);
    assert_eq!(through(BOTH).await, ["p4"]);
    set_kept_patients(&backend, "o1", Some("subject p9"));
    assert_eq!(through(BOTH).await, ["p4"]);

    delete(&store, "Observation", "o1", 3).await;
    assert!(
        through(BOTH).await.is_empty(),
        "a deleted resource has none"
    );
}

/// The first `limit` ids of `ty` whose `param` holds the token, in `_id` order.
async fn first_with_token(
    store: &hygie_store::SharedStore,
    ty: &str,
    param: &str,
    system: Option<&str>,
    code: &str,
    limit: usize,
) -> Vec<String> {
    let spec = SearchSpec {
        resource_type: ty.into(),
        filters: vec![matching(
            param,
            vec![Test::Token {
                system: system.map(str::to_owned),
                code: Some(code.into()),
            }],
        )],
        sort: vec![],
        position: None,
        limit,
    };
    let hits = store.run(move |tx| tx.search(&spec)).await.unwrap();
    for hit in &hits {
        assert_eq!(
            hit.sort_values,
            vec![hygie_store::SortValue::Text(hit.id.clone())],
            "the cursor of a page in _id order is the id"
        );
    }
    hits.into_iter().map(|hit| hit.id).collect()
}

/// What a conditional create or update asks (`identifier=system|value`, one token test
/// alone), which SQLite answers from the token index without the general query: the same
/// answer, sorted by id, each resource once however many of its rows match, deleted ones
/// left out (their rows go with the delete; the lookup also asks their resource), other
/// systems left out unless no system is asked, and every match found even when more rows
/// match than that lookup reads (the general query then pages them).
async fn a_lone_token_page_answers_as_the_general_query(backend: Backend) {
    let store = backend.store.clone();
    let mrn = |code: &str| token("identifier", "urn:mrn", code);
    // Written out of id order, so that the index's order is not the answer's.
    put(&store, "Patient", "p5", vec![mrn("X")]).await;
    put(&store, "Patient", "p1", vec![mrn("X"), mrn("Y")]).await;
    put(&store, "Patient", "p3", vec![mrn("X")]).await;
    put(&store, "Patient", "p2", vec![mrn("X"), mrn("X")]).await;
    put(&store, "Patient", "p4", vec![mrn("X")]).await;
    delete(&store, "Patient", "p4", 2).await;
    put(
        &store,
        "Patient",
        "p6",
        vec![token("identifier", "urn:other", "X")],
    )
    .await;
    put(&store, "Patient", "p7", vec![token("identifier", "", "X")]).await;
    put(&store, "Patient", "p8", vec![mrn("Y")]).await;
    put(&store, "Observation", "o1", vec![mrn("X")]).await;
    let first = |system, code, limit| {
        first_with_token(&store, "Patient", "identifier", system, code, limit)
    };
    assert_eq!(
        first(Some("urn:mrn"), "X", 10).await,
        ["p1", "p2", "p3", "p5"]
    );
    assert_eq!(first(Some("urn:mrn"), "X", 2).await, ["p1", "p2"]);
    assert_eq!(first(Some("urn:mrn"), "Y", 10).await, ["p1", "p8"]);
    assert_eq!(
        first(None, "X", 10).await,
        ["p1", "p2", "p3", "p5", "p6", "p7"]
    );
    assert_eq!(first(Some(""), "X", 10).await, ["p7"]);
    assert!(first(Some("urn:mrn"), "Z", 10).await.is_empty());
    let by_other_param = first_with_token(&store, "Patient", "other", None, "X", 10).await;
    assert!(by_other_param.is_empty());
    // More matches than the lookup reads, written from the highest id down: the rows it
    // would read first are the highest ids, and the answer is the lowest.
    let many = hygie_store::LONE_TOKEN_ROWS + 6;
    for n in (0..many).rev() {
        put(&store, "Patient", &format!("q{n:03}"), vec![mrn("Q")]).await;
    }
    assert_eq!(
        first(Some("urn:mrn"), "Q", 3).await,
        ["q000", "q001", "q002"]
    );
    let all = first(Some("urn:mrn"), "Q", 1000).await;
    assert_eq!(all.len(), many);
    assert!(all.windows(2).all(|pair| pair[0] < pair[1]));
}

/// A unit's own write of `ty/id`, its index pointing at `patient` as `subject`.
fn write_subject(tx: &mut dyn hygie_store::Tx, id: &str, patient: &str) -> Result<(), StoreError> {
    let version = tx
        .head("Observation", id)?
        .map_or(1, |head| head.version + 1);
    tx.put_version(&NewVersion {
        resource_type: "Observation",
        id,
        version,
        last_updated_us: version,
        deleted: false,
        body: b"{}",
        index: &[reference("subject", "Patient", patient)],
        key_id: None,
    })
}

/// An audited read asks for the patients of what it has just read, and SQLite answers from
/// the head row that read brought (`ReadHead`), not from a second look. Within one unit that
/// answer must still be the resource's patients after a write of it, and after a savepoint
/// rolled back; a stale one would leave a patient out of their access report, or name the
/// wrong one.
async fn the_patients_of_a_resource_just_read_are_its_current_ones(backend: Backend) {
    let store = backend.store.clone();
    for (ty, id, patient) in [
        ("Observation", "o1", "pa"),
        ("Observation", "o2", "px"),
        ("Condition", "o1", "py"),
    ] {
        put(
            &store,
            ty,
            id,
            vec![reference("subject", "Patient", patient)],
        )
        .await;
    }
    let subject = || vec!["subject".to_owned()];
    let answers = store
        .run(move |tx| {
            let mut answers = Vec::new();
            tx.current("Observation", "o1")?;
            answers.push(tx.referenced_through("Observation", "o1", &subject(), "Patient")?);
            // Read another resource, then ask about the first: another id, another type.
            tx.current("Observation", "o1")?;
            tx.current("Observation", "o2")?;
            answers.push(tx.referenced_through("Observation", "o1", &subject(), "Patient")?);
            assert!(tx.current("Condition", "o1")?.is_some());
            answers.push(tx.referenced_through("Observation", "o1", &subject(), "Patient")?);
            // Read, then move the resource to another patient.
            tx.current("Observation", "o1")?;
            write_subject(tx, "o1", "pb")?;
            answers.push(tx.referenced_through("Observation", "o1", &subject(), "Patient")?);
            // Move it within a savepoint, read it there, roll the move back.
            tx.savepoint()?;
            write_subject(tx, "o1", "pc")?;
            tx.current("Observation", "o1")?;
            tx.rollback_to_savepoint()?;
            answers.push(tx.referenced_through("Observation", "o1", &subject(), "Patient")?);
            Ok(answers)
        })
        .await
        .unwrap();
    assert_eq!(answers, [["pa"], ["pa"], ["pa"], ["pb"], ["pb"]]);
}
