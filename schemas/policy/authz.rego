# METADATA
# title: CompanyOS authorization
# description: |
#   Deny by default. The single entry point is `decision`; the Go engine
#   (policy/) evaluates data.companyos.authz.decision and stamps the bundle's
#   version and hash into every receipt.
#
#   decision.reasons explains the outcome: on allow, the rule(s) that granted
#   it (result true); on deny, why each candidate rule did not apply
#   (result false) plus a `default_deny` summary. Reasons are objects
#   {"rule", "result", "message", "attributes"}; they end up in signed
#   receipts, so messages must be deterministic functions of the input.
#
#   Input (see policy.Input): action, tenant, principal {id, kind, roles,
#   attrs, mfa, exists}, resource {id, kind, attrs, exists}, and for
#   relation.* also target and relation. principal.roles is the union of
#   token-asserted roles and the entity's "roles" attribute.
#
#   Decide is on the hot path: the allow path only touches `grants`; the
#   more expensive explanations in `denials` are evaluated only on deny.
package companyos.authz

# --- Decision ---------------------------------------------------------------

decision := {"allow": true, "reasons": grants} if {
	count(grants) > 0
} else := {"allow": false, "reasons": denials}

# allow is decision.allow, for tests and ad-hoc queries.
default allow := false

allow if count(grants) > 0

# --- Facts ------------------------------------------------------------------

known_action if input.action in data.companyos.actions

editor_actions := data.companyos.roles.editor.actions

# A region only counts when it is a non-empty string.
principal_region := r if {
	r := input.principal.attrs.region
	is_string(r)
	r != ""
}

resource_region := r if {
	r := input.resource.attrs.region
	is_string(r)
	r != ""
}

# The raw values (null when absent), for rationale. Precise input refs (not
# object.get(input, …)) keep decisions memoisable by the values they read.
default raw_principal_region := null

raw_principal_region := input.principal.attrs.region

default raw_resource_region := null

raw_resource_region := input.resource.attrs.region

# --- Rule: admin_all ----------------------------------------------------------
# Principals with role "admin" may perform every known action.

grants contains {
	"rule": "admin_all",
	"result": true,
	"message": sprintf("role \"admin\" may perform %q", [input.action]),
	"attributes": {"action": input.action, "role": "admin"},
} if {
	known_action
	"admin" in input.principal.roles
}

denials contains {
	"rule": "admin_all",
	"result": false,
	"message": "principal lacks role \"admin\"",
	"attributes": {"roles": sorted_roles},
} if {
	not "admin" in input.principal.roles
}

# --- Rule: editor_same_region -------------------------------------------------
# Principals with role "editor" may perform the editor actions
# (data.companyos.roles.editor.actions) on resources in their own region.

grants contains {
	"rule": "editor_same_region",
	"result": true,
	"message": sprintf("role \"editor\" may perform %q in own region %q", [input.action, principal_region]),
	"attributes": {"action": input.action, "role": "editor", "region": principal_region},
} if {
	editor_may_attempt
	principal_region == resource_region
}

# editor_may_attempt holds when only the region condition remains to check.
editor_may_attempt if {
	known_action
	"editor" in input.principal.roles
	input.action in editor_actions
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": "principal lacks role \"editor\"",
	"attributes": {"roles": sorted_roles},
} if {
	not "editor" in input.principal.roles
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": sprintf("action %q is not granted to role \"editor\" (granted: %s)", [action, concat(", ", sort(editor_actions))]),
	"attributes": {"action": action, "editor_actions": sort(editor_actions)},
} if {
	not input.action in editor_actions
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": "principal has no region (attrs.region must be a non-empty string)",
	"attributes": {"principal_region": raw_principal_region},
} if {
	editor_may_attempt
	not principal_region
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": "resource has no region (attrs.region must be a non-empty string)",
	"attributes": {"resource_region": raw_resource_region},
} if {
	editor_may_attempt
	not resource_region
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": sprintf("principal region %q != resource region %q", [principal_region, resource_region]),
	"attributes": {"principal_region": principal_region, "resource_region": resource_region},
} if {
	editor_may_attempt
	principal_region != resource_region
}

# --- Rule: role_grant ---------------------------------------------------------
# A role whose entry in data.companyos.roles lists the action under "actions"
# and is not "regional" may perform it anywhere in the tenant (auditor:
# provenance.disclose/export; finance: pricing.set).

grants contains {
	"rule": "role_grant",
	"result": true,
	"message": sprintf("role %q may perform %q", [role, input.action]),
	"attributes": {"action": input.action, "role": role},
} if {
	known_action
	some role in input.principal.roles
	r := data.companyos.roles[role]
	not r.regional
	input.action in r.actions
}

denials contains {
	"rule": "role_grant",
	"result": false,
	"message": sprintf("no role of the principal grants %q (roles granting it: %s)", [action, concat(", ", granting_roles)]),
	"attributes": {"action": action, "roles": sorted_roles, "granting_roles": granting_roles},
} if {
	known_action
	count(granting_roles) > 0
}

# granting_roles are the non-regional roles whose actions include the action.
granting_roles := sort([name |
	some name, r in data.companyos.roles
	not r.regional
	input.action in object.get(r, "actions", [])
])

# --- Every deny -----------------------------------------------------------------

denials contains {
	"rule": "known_action",
	"result": false,
	"message": sprintf("unknown action %q", [action]),
	"attributes": {"action": action},
} if {
	not known_action
}

denials contains {
	"rule": "default_deny",
	"result": false,
	"message": sprintf("no rule allows action %q for roles [%s]", [action, concat(", ", sorted_roles)]),
	"attributes": {"action": action, "roles": sorted_roles},
} if {
	count(grants) == 0
}

# --- Helpers for explanations (deny path only) -------------------------------------

# action is the requested action, or "" when absent or not a string.
action := a if {
	a := input.action
	is_string(a)
} else := ""

sorted_roles := sort({r | some r in input.principal.roles; is_string(r)})
