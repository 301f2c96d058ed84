// Unmodified Node OAuth clients against the broker's drop-in endpoints (run by
// tests/api/test_node_clients.py from a copy beside its node_modules in .tools/node-oauth).
// argv: BASE_URL CLIENT_ID CLIENT_SECRET; the broker's CA comes in NODE_EXTRA_CA_CERTS.
// Prints one JSON object: what each client saw (tokens, metadata, the error of OIDC discovery).
import * as oidc from 'openid-client';
import { ClientCredentials } from 'simple-oauth2';

const [base, id, secret] = process.argv.slice(2);
const out = {};
// Each revocation forces a refresh; the broker allows one per client per second (its floor).
const pastTheFloor = () => new Promise((resolve) => setTimeout(resolve, 1100));

// openid-client 6: RFC 8414 discovery (path insertion) for each issuer, then client credentials,
// RFC 7009 revocation and client credentials again.
for (const [name, issuer, auth] of [
  ['openid_client_per_client', `${base}/oauth2/checkout`, oidc.ClientSecretPost(secret)],
  ['openid_client_paysera_path', base, oidc.ClientSecretBasic(secret)],
]) {
  const config = await oidc.discovery(new URL(issuer), id, undefined, auth, { algorithm: 'oauth2' });
  const metadata = config.serverMetadata();
  const first = await oidc.clientCredentialsGrant(config);
  await pastTheFloor();
  await oidc.tokenRevocation(config, first.access_token);
  const second = await oidc.clientCredentialsGrant(config);
  out[name] = {
    issuer: metadata.issuer,
    token_endpoint: metadata.token_endpoint,
    revocation_endpoint: metadata.revocation_endpoint,
    first: first.access_token,
    second: second.access_token,
  };
}

// openid-client's default, OpenID Connect discovery: the broker is no OpenID provider.
try {
  await oidc.discovery(new URL(base), id, secret);
  out.openid_client_oidc_discovery = 'succeeded';
} catch (error) {
  out.openid_client_oidc_discovery = `${error.name}: ${error.message} (HTTP ${error.cause?.status})`;
}

// simple-oauth2 5 (no discovery): client credentials with HTTP Basic, revoke, fetch again.
const simple = new ClientCredentials({
  client: { id, secret },
  auth: {
    tokenHost: base,
    tokenPath: '/oauth2/checkout/token',
    revokePath: '/oauth2/checkout/revoke',
  },
});
const first = await simple.getToken({});
await pastTheFloor();
await first.revoke('access_token');
const second = await simple.getToken({});
out.simple_oauth2 = { first: first.token.access_token, second: second.token.access_token };

console.log(JSON.stringify(out));
