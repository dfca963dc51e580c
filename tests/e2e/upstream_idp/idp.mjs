// The upstream OIDC provider of the sign-in tests: node oidc-provider, one pre-registered client,
// dynamic registration off, dev interactions (a login form where the login is the account id,
// then a consent form). Users' roles come from ROLES below.
// Usage: node idp.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const ROLES = { oscar: ['accounting'], dana: ['doctor'], vera: ['vp'] };

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, name: id, roles: ROLES[id] || [] };
      },
    };
  },
  claims: { openid: ['sub', 'roles'], email: ['email', 'email_verified'], profile: ['name'] },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true }, registration: { enabled: false } },
  pkce: { required: () => true },
  cookies: { keys: ['authz-test-only'] },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`oidc-provider ready at ${issuer}`));
