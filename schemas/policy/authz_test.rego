# Unit tests for authz.rego. The Go engine runs these when it loads the
# bundle and refuses the bundle if any fail.
package companyos.authz_test

import data.companyos.authz

admin := {"id": "user:root", "roles": ["admin"], "attrs": {}, "mfa": false, "exists": true}

editor_eu := {"id": "user:eve", "roles": ["editor"], "attrs": {"region": "eu"}, "mfa": false, "exists": true}

nobody := {"id": "user:nobody", "roles": [], "attrs": {"region": "eu"}, "mfa": false, "exists": true}

doc_eu := {"id": "doc:1", "kind": "document", "attrs": {"region": "eu"}, "exists": true}

doc_us := {"id": "doc:2", "kind": "document", "attrs": {"region": "us"}, "exists": true}

req(action, principal, resource) := {"action": action, "tenant": "acme", "principal": principal, "resource": resource}

rules(d) := {r.rule | some r in d.reasons}

messages(d) := {r.message | some r in d.reasons}

test_admin_may_do_every_action if {
	every a in data.companyos.actions {
		authz.decision.allow with input as req(a, admin, doc_us)
	}
}

test_admin_reason_names_rule if {
	d := authz.decision with input as req("entity.delete", admin, doc_us)
	d.allow
	rules(d) == {"admin_all"}
	every r in d.reasons {
		r.result == true
	}
}

test_admin_denied_unknown_action if {
	d := authz.decision with input as req("tenant.destroy", admin, doc_us)
	not d.allow
	"unknown action \"tenant.destroy\"" in messages(d)
}

test_editor_same_region_create_and_update if {
	every a in ["entity.create", "entity.update"] {
		d := authz.decision with input as req(a, editor_eu, doc_eu)
		d.allow
		rules(d) == {"editor_same_region"}
	}
}

test_editor_other_region_denied if {
	d := authz.decision with input as req("entity.update", editor_eu, doc_us)
	not d.allow
	"principal region \"eu\" != resource region \"us\"" in messages(d)
	every r in d.reasons {
		r.result == false
	}
}

test_editor_may_not_delete_or_link if {
	every a in ["entity.delete", "relation.link", "relation.unlink"] {
		d := authz.decision with input as req(a, editor_eu, doc_eu)
		not d.allow
		sprintf("action %q is not granted to role \"editor\" (granted: entity.create, entity.update)", [a]) in messages(d)
	}
}

test_editor_missing_principal_region_denied if {
	p := json.remove(editor_eu, ["attrs/region"])
	d := authz.decision with input as req("entity.create", p, doc_eu)
	not d.allow
	"principal has no region (attrs.region must be a non-empty string)" in messages(d)
}

test_editor_empty_resource_region_denied if {
	r := object.union(doc_eu, {"attrs": {"region": ""}})
	d := authz.decision with input as req("entity.create", editor_eu, r)
	not d.allow
	"resource has no region (attrs.region must be a non-empty string)" in messages(d)
}

test_editor_non_string_regions_denied if {
	p := object.union(editor_eu, {"attrs": {"region": 1}})
	r := object.union(doc_eu, {"attrs": {"region": 1}})
	not authz.decision.allow with input as req("entity.create", p, r)
}

test_no_roles_denied_everything if {
	every a in data.companyos.actions {
		d := authz.decision with input as req(a, nobody, doc_eu)
		not d.allow
		sprintf("no rule allows action %q for roles []", [a]) in messages(d)
	}
}

test_unknown_role_denied if {
	p := object.union(nobody, {"roles": ["viewer"]})
	d := authz.decision with input as req("entity.create", p, doc_eu)
	not d.allow
	"no rule allows action \"entity.create\" for roles [viewer]" in messages(d)
}

test_empty_input_denied if {
	d := authz.decision with input as {}
	not d.allow
	"default_deny" in rules(d)
}

test_allow_agrees_with_decision if {
	authz.allow with input as req("entity.create", admin, doc_us)
	not authz.allow with input as req("entity.create", nobody, doc_us)
	not authz.allow with input as {}
}
