// Command ldap-groups is a tsidp claims plugin that sets the "groups" claim
// from an LDAP directory. It finds the caller's entry by login (mail or uid)
// and reads its groups either from the entry's memberOf attribute or with a
// search for groups that list the entry as a member.
//
// Plugin configuration (JSON or YAML under "config:"):
//
//	url: ldaps://ldap.example.com          # ldap:// or ldaps://; required
//	start_tls: false                       # upgrade an ldap:// connection
//	insecure_plaintext_bind: false         # allow a password bind over plain ldap://
//	ca_file: /etc/tsidp/ldap-ca.pem        # CA bundle; default: system roots
//	server_name: ""                        # TLS name; default: the URL's host
//	bind_dn: cn=tsidp,ou=services,dc=example,dc=com   # empty: anonymous
//	bind_password_file: /run/secrets/ldap  # read at start; trailing newline ignored
//	user_base_dn: ou=people,dc=example,dc=com         # required
//	user_filter: (mail={login})            # {login}, {localpart} are escaped
//	login_domains: [example.com]           # required if user_filter uses {localpart}
//	group_mode: member_of                  # member_of or search
//	member_of_attribute: memberOf
//	group_base_dn: ou=groups,dc=example,dc=com        # required for search; filters member_of
//	group_filter: (member={dn})            # search mode; {dn} is escaped
//	group_name_attribute: cn               # search mode
//	timeout: 2s                            # dial, bind and each LDAP operation
//	cache_ttl: 60s                         # how long tsidp may cache an answer
//
// Every DN setting must parse as a non-empty DN: a group_base_dn such as
// "groups" is refused rather than read as "everywhere".
//
// {localpart} is the part of the login before "@". Logins are global —
// alice@example.com and alice@evil.example are different people with the
// same local part — so a user_filter using {localpart} requires
// login_domains, the login domains whose people the directory holds (for
// example "(uid={localpart})" with login_domains: [example.com]). Callers
// whose login is in another domain get no groups claim, as if they were
// not in the directory. login_domains may be set with {login} too, with the
// same effect.
//
// A bind password is never sent in cleartext: with bind_password_file, an
// ldap:// URL needs start_tls: true, unless insecure_plaintext_bind: true
// says that the network path to the directory is trusted.
//
// People get the names of their groups; tagged devices, which have no
// login, and people not in the directory (or not in login_domains) get no
// groups claim.
package main

import "github.com/tsidp/tsidp/pkg/claims/sdk"

var version = "1.0.0"

func main() { sdk.Serve(&ldapPlugin{}) }
