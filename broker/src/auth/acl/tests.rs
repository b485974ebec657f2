use super::*;
use crate::topic::strategies;
use proptest::prelude::*;

fn acl(text: &str) -> Acl {
    Acl::from_rules(parse_acl_file(text, "acl").unwrap())
}

fn parse_error(text: &str) -> String {
    parse_acl_file(text, "/etc/acl").unwrap_err().to_string()
}

#[test]
fn allow_all_allows_everything() {
    let client = Acl::allow_all().client(None, "c");
    assert!(client.can_publish("a/b"));
    assert!(client.can_subscribe("#"));
    assert!(client.can_subscribe("$SYS/#"));
    assert!(client.can_receive("$SYS/broker/uptime"));
    // Shared by every client.
    assert!(Arc::ptr_eq(
        &client,
        &Acl::allow_all().client(Some("u"), "d")
    ));
}

/// The example from `man mosquitto.conf` plus the access types.
#[test]
fn mosquitto_conf_example() {
    let acl = acl("# anonymous clients\n\
                   topic read public/#\n\
                   \n\
                   user alice\n\
                   topic readwrite alice/#\n\
                   topic write logs\n\
                   topic bulletin\n\
                   pattern write sensor/%u/data\n\
                   pattern write $SYS/broker/connection/%c/state\n");
    let anonymous = acl.client(None, "anon-1");
    assert!(anonymous.can_receive("public/news"));
    assert!(anonymous.can_subscribe("public/#"));
    assert!(!anonymous.can_publish("public/news"), "read only");
    assert!(!anonymous.can_receive("alice/x"));
    assert!(
        !anonymous.can_publish("sensor/anon-1/data"),
        "%u needs a user"
    );
    assert!(anonymous.can_publish("$SYS/broker/connection/anon-1/state"));

    let alice = acl.client(Some("alice"), "dev-7");
    assert!(alice.can_publish("alice/x/y"));
    assert!(alice.can_receive("alice/x"));
    assert!(alice.can_publish("logs"));
    assert!(!alice.can_receive("logs"), "write only");
    assert!(alice.can_publish("bulletin") && alice.can_receive("bulletin"));
    assert!(
        !alice.can_receive("public/news"),
        "anonymous rules are not hers"
    );
    assert!(
        alice.can_publish("sensor/alice/data"),
        "patterns apply to all"
    );
    assert!(!alice.can_receive("sensor/alice/data"));
    assert!(!alice.can_publish("sensor/bob/data"));
    assert!(alice.can_publish("$SYS/broker/connection/dev-7/state"));
    assert!(!alice.can_publish("$SYS/broker/connection/other/state"));

    let bob = acl.client(Some("bob"), "b");
    assert!(!bob.can_publish("alice/x"), "no section: only patterns");
    assert!(bob.can_publish("sensor/bob/data"));
}

#[test]
fn deny_overrides_grants_in_the_same_group() {
    let acl = acl("user u\n\
                   topic readwrite home/#\n\
                   topic deny home/secret/#\n\
                   pattern read devices/%c/#\n\
                   pattern deny devices/%c/keys\n");
    let u = acl.client(Some("u"), "d1");
    assert!(u.can_publish("home/kitchen"));
    assert!(!u.can_publish("home/secret"));
    assert!(!u.can_receive("home/secret/x"));
    assert!(u.can_subscribe("home/#"), "deny only covers part of it");
    assert!(!u.can_subscribe("home/secret/#"));
    assert!(!u.can_subscribe("home/secret/+"));
    assert!(u.can_receive("devices/d1/temp"));
    assert!(!u.can_receive("devices/d1/keys"));
}

/// mosquitto checks the user's `topic` rules before any pattern, so a
/// user grant wins over a `pattern deny` (verified with mosquitto 2.0.11).
#[test]
fn user_grant_is_checked_before_pattern_deny() {
    let acl = acl("user alice\ntopic readwrite open/#\npattern deny open/%u/secret\n");
    assert!(acl
        .client(Some("alice"), "c")
        .can_publish("open/alice/secret"));
    assert!(!acl.client(Some("bob"), "c").can_publish("open/bob/secret"));
}

#[test]
fn deny_lines_apply_wherever_they_appear() {
    let acl = acl("topic deny a/b\ntopic readwrite a/#\n");
    let client = acl.client(None, "c");
    assert!(!client.can_publish("a/b"));
    assert!(client.can_publish("a/c"));
}

#[test]
fn access_type_is_optional_and_topics_may_contain_spaces() {
    let acl = acl("topic plain\ntopic read with space/x\ntopic read\n");
    let client = acl.client(None, "c");
    assert!(client.can_publish("plain") && client.can_receive("plain"));
    assert!(client.can_receive("with space/x"));
    assert!(!client.can_publish("with space/x"));
    // As in mosquitto, `topic read` names the topic `read`.
    assert!(client.can_publish("read"));
}

#[test]
fn subscribe_needs_a_read_rule_covering_the_filter() {
    let acl = acl("user u\ntopic read sensors/+/temp\ntopic read logs/#\ntopic write cmd/#\n");
    let u = acl.client(Some("u"), "c");
    assert!(u.can_subscribe("sensors/a/temp"));
    assert!(u.can_subscribe("sensors/+/temp"));
    assert!(!u.can_subscribe("sensors/#"));
    assert!(!u.can_subscribe("sensors/a/+"));
    assert!(!u.can_subscribe("#"));
    assert!(u.can_subscribe("logs"));
    assert!(u.can_subscribe("logs/#"));
    assert!(u.can_subscribe("logs/+/x"));
    assert!(
        !u.can_subscribe("cmd/#"),
        "write does not allow subscribing"
    );
    assert!(u.can_subscribe("$share/g/logs/#"));
    assert!(!u.can_subscribe("$share/g/cmd/#"));
    assert!(!u.can_subscribe("$share/g"), "malformed shared filter");
}

#[test]
fn sys_topics_need_an_explicit_rule() {
    let everything = acl("topic readwrite #\n");
    let client = everything.client(None, "c");
    assert!(client.can_receive("a/b"));
    assert!(client.can_subscribe("#"));
    assert!(!client.can_receive("$SYS/broker/uptime"));
    assert!(!client.can_subscribe("$SYS/#"));

    let monitor = acl("user mon\ntopic read $SYS/#\ntopic read #\n");
    let mon = monitor.client(Some("mon"), "c");
    assert!(mon.can_receive("$SYS/broker/uptime"));
    assert!(mon.can_subscribe("$SYS/#"));
    assert!(mon.can_subscribe("$SYS/broker/+"));
    assert!(!mon.can_publish("$SYS/broker/uptime"));
}

#[test]
fn unsafe_ids_get_nothing_from_patterns() {
    let acl = acl("user u\ntopic read own/#\npattern readwrite c/%c/#\n");
    assert!(acl.client(Some("u"), "ok").can_publish("c/ok/x"));
    let sneaky = acl.client(Some("u"), "#");
    assert!(!sneaky.can_publish("c/#/x"));
    assert!(!sneaky.can_receive("c/other/x"));
    assert!(sneaky.can_receive("own/x"), "own topic rules still apply");
    let sneaky_user = acl.client(Some("a+b"), "ok");
    assert!(!sneaky_user.can_publish("c/ok/x"));
}

#[test]
fn empty_acl_file_refuses_everything() {
    let client = acl("# nothing\n").client(Some("u"), "c");
    assert!(!client.can_publish("a"));
    assert!(!client.can_receive("a"));
    assert!(!client.can_subscribe("a"));
}

#[test]
fn user_sections_merge_and_names_may_contain_spaces() {
    let acl = acl("user joe bloggs\ntopic a\nuser x\ntopic b\nuser joe bloggs\ntopic c\n");
    let joe = acl.client(Some("joe bloggs"), "c");
    assert!(joe.can_publish("a") && joe.can_publish("c"));
    assert!(!joe.can_publish("b"));
}

#[test]
fn tabs_and_crlf_are_accepted() {
    let acl = acl("user\tu\r\n  topic\tread\ta/#\r\n");
    assert!(acl.client(Some("u"), "c").can_receive("a/b"));
}

#[test]
fn parse_errors_name_file_and_line() {
    assert_eq!(
        parse_error("user u\n\ntopic sometimes a/b\n"),
        "/etc/acl:3: invalid access type `sometimes` (expected read, write, readwrite or \
         deny; a topic with spaces needs an access type)"
    );
    assert_eq!(
        parse_error("# c\nuser\n"),
        "/etc/acl:2: `user` needs a user name"
    );
    assert_eq!(
        parse_error("topic\n"),
        "/etc/acl:1: `topic` needs a topic filter"
    );
    assert_eq!(
        parse_error("topic read a/#/b\n"),
        "/etc/acl:1: invalid topic filter `a/#/b`"
    );
    assert_eq!(
        parse_error("topic a\nallow all\n"),
        "/etc/acl:2: unknown keyword `allow` (expected user, topic or pattern)"
    );
}

#[test]
fn substitution() {
    assert_eq!(
        substitute("a/%u/%c/x", Some("u"), "c", None).unwrap(),
        "a/u/c/x"
    );
    assert_eq!(substitute("%c-%c/%", None, "id", None).unwrap(), "id-id/%");
    assert_eq!(substitute("a/%x/b", None, "id", None).unwrap(), "a/%x/b");
    assert_eq!(substitute("a/%u", None, "id", None), None);
    assert_eq!(substitute("a/%d", None, "id", None).unwrap(), "a/%d");
    assert_eq!(
        substitute("a/%d/%u", Some("u"), "c", Some("dev")).unwrap(),
        "a/dev/u"
    );
}

#[test]
fn fleet_devices_get_their_own_rules_then_the_template() {
    let template = parse_acl_file(
        "pattern write sensors/%d/#\npattern read cmd/%d\npattern deny sensors/%d/secret\n",
        "t",
    )
    .unwrap()
    .patterns;
    let own = parse_acl_file("pattern write extra/%c\n", "o")
        .unwrap()
        .patterns;
    let dev = Acl::fleet_client([&own, &template], "dev-1@s", "c1", "dev-1");
    assert!(dev.can_publish("sensors/dev-1/temp"));
    assert!(!dev.can_publish("sensors/dev-2/temp"));
    assert!(!dev.can_publish("sensors/dev-1/secret"));
    assert!(dev.can_subscribe("cmd/dev-1"));
    assert!(dev.can_publish("extra/c1"));
    let sneaky = Acl::fleet_client([&own, &template], "u", "c1", "#");
    assert!(!sneaky.can_publish("sensors/#/x"), "unsafe device id");
    let open = Acl::fleet_client([&[], &[]], "u", "c", "d");
    assert!(open.can_publish("any") && open.can_subscribe("#"));
    assert!(!Acl::deny_all().can_publish("any"));
}

#[test]
fn covers_examples() {
    assert!(covers("#", "a/+/b"));
    assert!(covers("a/#", "a"));
    assert!(covers("a/#", "a/#"));
    assert!(covers("+/b", "+/b"));
    assert!(!covers("a/+", "a"));
    assert!(!covers("a/+", "a/#"));
    assert!(!covers("a/b", "a/+"));
    assert!(!covers("#", "$SYS/x"));
    assert!(!covers("+/x", "$SYS/x"));
    assert!(covers("$SYS/#", "$SYS/+/x"));
    assert!(!covers("$SYS/#", "#"));
    assert!(!covers("a/b", "a/b/c"));
}

proptest! {
    /// Whatever a covered filter matches, the covering rule matches.
    #[test]
    fn covers_is_sound(
        rule in strategies::topic_filter(),
        filter in strategies::topic_filter(),
        topic in strategies::topic_name(),
    ) {
        if covers(&rule, &filter) && topic::matches(&filter, &topic) {
            prop_assert!(topic::matches(&rule, &topic));
        }
    }

    /// A filter without wildcards is covered exactly when it matches.
    #[test]
    fn covers_agrees_with_matches_on_topic_names(
        rule in strategies::topic_filter(),
        topic in strategies::topic_name(),
    ) {
        prop_assert_eq!(covers(&rule, &topic), topic::matches(&rule, &topic));
    }

    #[test]
    fn every_filter_covers_itself(filter in strategies::topic_filter()) {
        prop_assert!(covers(&filter, &filter));
    }
}
