import Hummingbird
import AsyncHTTPClient
print("stub")
