# Unit tests for authz.rego. The Go engine runs these when it loads the
# bundle and refuses the bundle if any fail.
package companyos.authz_test

import data.companyos.authz

admin := {"id": "user:root", "roles": ["admin"], "attrs": {}, "mfa": true, "mfa_age_seconds": 10, "exists": true}

editor_eu := {"id": "user:eve", "roles": ["editor"], "attrs": {"region": "eu"}, "mfa": false, "exists": true}

nobody := {"id": "user:nobody", "roles": [], "attrs": {"region": "eu"}, "mfa": false, "exists": true}

doc_eu := {"id": "doc:1", "kind": "document", "attrs": {"region": "eu"}, "exists": true}

doc_us := {"id": "doc:2", "kind": "document", "attrs": {"region": "us"}, "exists": true}

req(action, principal, resource) := {"action": action, "tenant": "acme", "principal": principal, "resource": resource}

rules(d) := {r.rule | some r in d.reasons}

messages(d) := {r.message | some r in d.reasons}

test_admin_may_do_every_action if {
	every a in data.companyos.actions {
		authz.decision.allow with input as object.union(req(a, admin, doc_us), {"context": {"justification": "ticket-1"}})
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

# --- step-up, dual control, approvals, justification --------------------------

admin_stale := object.union(admin, {"mfa_age_seconds": 100000})

admin_no_mfa := object.union(admin, {"mfa": false, "mfa_age_seconds": -1})

dataset_prod := {"id": "dataset:prod", "kind": "dataset", "attrs": {"classification": "restricted", "region": "eu"}, "exists": true}

approval(who, roles) := {"approver": who, "approver_roles": roles}

with_approvals(r, approvals) := object.union(r, {"context": {"approvals": approvals, "requester": r.principal.id}})

obligation_types(d) := {o.type | some o in d.obligations}

test_step_up_needs_fresh_mfa if {
	d := authz.decision with input as req("entity.delete", admin_no_mfa, doc_eu)
	not d.allow
	obligation_types(d) == {"mfa_required"}
	"step_up_mfa" in rules(d)
	d2 := authz.decision with input as req("entity.delete", admin_stale, doc_eu)
	not d2.allow
	authz.decision.allow with input as req("entity.delete", admin, doc_eu)
}

test_step_up_not_for_ordinary_actions if {
	authz.decision.allow with input as req("entity.update", admin_no_mfa, doc_eu)
}

test_protected_delete_needs_two_approvers if {
	d := authz.decision with input as with_approvals(req("entity.delete", admin, dataset_prod), [])
	not d.allow
	obligation_types(d) == {"approvals_required"}
	some o in d.obligations
	o.params.count == 2
	o.params.have == 0
	one := with_approvals(req("entity.delete", admin, dataset_prod), [approval("user:bob", ["approver"])])
	not authz.decision.allow with input as one
	two := with_approvals(req("entity.delete", admin, dataset_prod), [approval("user:bob", ["approver"]), approval("user:carol", ["approver"])])
	authz.decision.allow with input as two
}

test_dual_control_same_person_twice_counts_once if {
	r := with_approvals(req("entity.delete", admin, dataset_prod), [approval("user:bob", ["approver"]), approval("user:bob", ["approver"])])
	not authz.decision.allow with input as r
}

test_dual_control_requester_and_ineligible_do_not_count if {
	r := with_approvals(req("entity.delete", admin, dataset_prod), [approval("user:root", ["approver"]), approval("user:bob", ["approver"]), approval("user:dan", ["editor"])])
	d := authz.decision with input as r
	not d.allow
	some o in d.obligations
	o.params.have == 1
}

test_dual_control_needs_mfa_too if {
	r := with_approvals(req("entity.delete", admin_no_mfa, dataset_prod), [approval("user:bob", ["approver"]), approval("user:carol", ["approver"])])
	d := authz.decision with input as r
	not d.allow
	obligation_types(d) == {"mfa_required"}
}

approver_bob := {"id": "user:bob", "roles": ["approver"], "attrs": {}, "mfa": false, "mfa_age_seconds": -1, "exists": true}

test_approver_may_approve_with_justification if {
	r := object.union(req("approval.grant", approver_bob, dataset_prod), {"context": {"approval": {"requester": "user:alice", "approver": "user:bob", "action": "entity.delete"}, "justification": "CHG-42"}})
	authz.decision.allow with input as r
}

test_no_self_approval if {
	r := object.union(req("approval.grant", approver_bob, dataset_prod), {"context": {"approval": {"requester": "user:bob", "approver": "user:bob", "action": "entity.delete"}, "justification": "mine"}})
	d := authz.decision with input as r
	not d.allow
	"no_self_approval" in rules(d)
}

test_approval_needs_justification if {
	r := object.union(req("approval.grant", approver_bob, dataset_prod), {"context": {"approval": {"requester": "user:alice", "approver": "user:bob", "action": "entity.delete"}}})
	d := authz.decision with input as r
	not d.allow
	obligation_types(d) == {"justification_required"}
}

test_auditor_may_disclose_with_fresh_mfa if {
	auditor := {"id": "user:carol", "roles": ["auditor"], "attrs": {}, "mfa": true, "mfa_age_seconds": 5, "exists": true}
	authz.decision.allow with input as req("provenance.disclose", auditor, doc_eu)
	not authz.decision.allow with input as req("provenance.disclose", object.union(auditor, {"mfa": false}), doc_eu)
	not authz.decision.allow with input as req("entity.create", auditor, doc_eu)
}

test_finance_may_set_prices if {
	fin := {"id": "user:fin", "roles": ["finance"], "attrs": {}, "mfa": false, "mfa_age_seconds": -1, "exists": true}
	authz.decision.allow with input as req("pricing.set", fin, {"id": "price:compute.cpu_seconds", "attrs": {}, "exists": false})
	not authz.decision.allow with input as req("pricing.set", editor_eu, {"id": "price:compute.cpu_seconds", "attrs": {}, "exists": false})
}

test_terminated_principal_denied_everything if {
	p := object.union(admin, {"attrs": {"employment_status": "terminated"}})
	d := authz.decision with input as req("entity.update", p, doc_eu)
	not d.allow
	"employment_active" in rules(d)
}

test_high_risk_needs_mfa if {
	p := object.union(admin_no_mfa, {"attrs": {"risk_score": 85}})
	d := authz.decision with input as req("entity.update", p, doc_eu)
	not d.allow
	obligation_types(d) == {"mfa_required"}
	low := object.union(admin_no_mfa, {"attrs": {"risk_score": 10}})
	authz.decision.allow with input as req("entity.update", low, doc_eu)
}

test_data_residency if {
	res := {"id": "doc:9", "kind": "document", "attrs": {"region": "eu", "residency": ["eu", "ch"]}, "exists": true}
	authz.decision.allow with input as req("entity.update", object.union(editor_eu, {"attrs": {"region": "eu"}}), res)
	d := authz.decision with input as req("entity.update", object.union(admin, {"attrs": {"region": "us"}}), res)
	not d.allow
	"data_residency" in rules(d)
}
